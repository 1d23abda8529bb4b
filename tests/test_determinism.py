"""Same keys => bit-for-bit the same estimates, for every estimator; estimates are pure
functions of ``(theta, state, key)``; and the keys do matter. (Jitted versus eager is
checked for the BPTT estimators in ``test_bptt.py``; eager ES/PES windows take tens of
seconds to trace op by op, too slow to repeat here for every estimator.)

The system is ``noisy_rnn_system``: its state noise comes from a key kept in the state,
so even BPTT's answer depends on the keys of ``init``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import ES_FAMILY, ESTIMATOR_NAMES, build_estimator, noisy_rnn_system, rnn_theta

KEY = jax.random.PRNGKey(42)
NUM_WINDOWS = 3


def problem(name):
    system = noisy_rnn_system(n=3, m=2, horizon=6)
    return build_estimator(name, system, num_workers=2), rnn_theta(n=3, m=2)


def leaves(tree):
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree_util.tree_leaves(tree)
    ]


def assert_bitwise_equal(a, b, what):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
    for x, y in zip(leaves(a), leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        np.testing.assert_array_equal(x, y, err_msg=what)


def run(init, estimate, theta, init_key, estimate_key, num_windows=NUM_WINDOWS):
    state = init(theta, init_key)
    out = [state]
    for i in range(num_windows):
        grad, state, info = estimate(theta, state, jax.random.fold_in(estimate_key, i))
        out.append((grad, state, info))
    return out


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_determinism(name):
    """One compiled ``init``/``estimate`` pair per estimator (compiling is the slow part)."""
    est, theta = problem(name)
    init, estimate = jax.jit(est.init), jax.jit(est.estimate)

    # same keys => bit-for-bit the same states, estimates and infos, window after window
    first = run(init, estimate, theta, KEY, KEY)
    second = run(init, estimate, theta, KEY, KEY)
    assert_bitwise_equal(first, second, f"{name}: two runs with the same keys differ")

    # an estimator built and traced afresh lowers to the very same program: no hidden
    # Python-side state or randomness is baked in at trace time (lowering, unlike
    # compiling, is cheap; the same program compiles to the same numbers)
    fresh, _ = problem(name)
    for a, b, args in [(est.init, fresh.init, (theta, KEY)), (est.estimate, fresh.estimate, (theta, first[0], KEY))]:
        assert jax.jit(a).lower(*args).as_text() == jax.jit(b).lower(*args).as_text(), name

    # a pure function of (theta, state, key): calling it again from the same state repeats it
    again = tuple(estimate(theta, first[1][1], jax.random.fold_in(KEY, 1)))  # an Estimate, compared as a tuple
    assert_bitwise_equal(again, first[2], f"{name}: estimate from the same state and key differs")

    # every estimate is finite and has theta's structure and dtypes
    for grad, _, info in first[1:]:
        assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(theta)
        for g, th in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(theta)):
            assert g.shape == th.shape and g.dtype == th.dtype
            assert np.all(np.isfinite(g))
        assert np.isfinite(info["loss"]) and int(info["steps"]) > 0

    # not vacuous: the keys reach the computation. init's key seeds the episodes (and the
    # system's own noise), so it changes every estimator's answer
    other = run(init, estimate, theta, jax.random.PRNGKey(7), KEY, num_windows=1)[1][0]
    assert_differ(first[1][0], other, f"{name}: a different init key gave the same estimate")
    if name in ("es", "truncated_es", "pes"):  # these draw their perturbations from estimate's key
        other, _, _ = estimate(theta, first[0], jax.random.PRNGKey(8))
        assert_differ(first[1][0], other, f"{name}: a different estimate key gave the same estimate")


def assert_differ(a, b, what):
    assert any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b))), what


MIXED_W = np.asarray([[0.5, 0.1], [-0.2, 0.4]])


def _mixed_system():
    """A float64 state (x64) driven by a theta that may be float32, as flax and equinox params are by default."""

    def init(theta, key):
        return jnp.zeros(2, jnp.float64) + 0.1 * jax.random.normal(key, (2,), jnp.float64)

    def step(theta, s, t):
        s = jnp.tanh(theta["w"] @ s + theta["b"])
        return s, jnp.sum(s**2)

    return unroll.System(init, step, 6)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_float32_theta_with_a_float64_state(name):
    """Every estimator runs on it and returns theta's dtypes (accumulators such as RTRL's influence keep
    their dtype across steps); the non-random ones match the same theta in float64 to float32 rounding."""
    est = build_estimator(name, _mixed_system())
    theta64 = {"w": jnp.asarray(MIXED_W), "b": jnp.asarray([0.3, -0.1])}
    theta32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), theta64)
    estimate = jax.jit(est.estimate)
    grad32, _, _ = estimate(theta32, est.init(theta32, KEY), jax.random.key(1))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grad32))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad32))
    if name not in ES_FAMILY and name not in ("forward_gradient", "uoro", "dni"):  # these draw noise in theta's dtype
        grad64, _, _ = estimate(theta64, est.init(theta64, KEY), jax.random.key(1))
        for g32, g64 in zip(jax.tree_util.tree_leaves(grad32), jax.tree_util.tree_leaves(grad64)):
            np.testing.assert_allclose(np.asarray(g32), np.asarray(g64), rtol=1e-4, atol=1e-6)
