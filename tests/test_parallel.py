"""``unroll.parallel.linear_recurrence`` against a Python loop, finite differences and a
sequential ``lax.scan``; ``parallel_bptt`` against ``full_bptt`` and RTRL (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import diagonal_system, diagonal_theta, rnn_system, window_estimates
from unroll.parallel import linear_recurrence

KEY = jax.random.key(0)
T, N = 9, 3


def loop(a, b, h0, reverse):
    """The recurrence one Python step at a time (numpy)."""
    a, b = np.broadcast_to(a, b.shape), np.asarray(b)
    h, out = np.asarray(h0, b.dtype), np.zeros_like(b)
    for t in reversed(range(len(b))) if reverse else range(len(b)):
        h = a[t] * h + b[t]
        out[t] = h
    return out


def sequential(a, b, h0, reverse):
    """The recurrence as a ``lax.scan`` (differentiated by JAX)."""
    body = lambda h, x: (x[0] * h + x[1],) * 2
    return jax.lax.scan(body, h0, (jnp.broadcast_to(a, b.shape), b), reverse=reverse)[1]


def coefficients(complex_values=False, seed=0, a_shape=(T, N)):
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.normal(size=shape) + (1j * rng.normal(size=shape) if complex_values else 0)
    return 0.9 * draw(a_shape), draw((T, N)), draw((N,))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("complex_values", [False, True])
def test_recurrence_equals_the_loop(reverse, complex_values):
    a, b, h0 = coefficients(complex_values)
    np.testing.assert_allclose(linear_recurrence(a, b, h0, reverse=reverse), loop(a, b, h0, reverse), atol=1e-12)
    np.testing.assert_allclose(linear_recurrence(a, b, reverse=reverse), loop(a, b, 0 * h0, reverse), atol=1e-12)


def test_recurrence_of_a_pytree_with_broadcast_coefficients():
    (a1, b1, h1), (a2, b2, _) = coefficients(seed=1), coefficients(True, seed=2, a_shape=(T, 1))
    out = linear_recurrence({"x": a1, "y": (a2,)}, {"x": b1, "y": (b2,)}, {"x": h1, "y": (jnp.zeros(N),)})
    np.testing.assert_allclose(out["x"], loop(a1, b1, h1, False), atol=1e-12)
    np.testing.assert_allclose(out["y"][0], loop(a2, b2, np.zeros(N), False), atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_equals_finite_differences_and_the_sequential_scan(reverse):
    a, b, h0 = coefficients(seed=3, a_shape=(T, 1))
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(T, N)))
    loss = lambda f: lambda a, b, h0: jnp.sum(weights * jnp.sin(f(a, b, h0, reverse)))
    ours = jax.grad(loss(linear_recurrence), (0, 1, 2))(a, b, h0)
    scan = jax.grad(loss(sequential), (0, 1, 2))(a, b, h0)
    for x, y in zip(ours, scan):
        np.testing.assert_allclose(x, y, atol=1e-12)
    eps, f = 1e-6, loss(linear_recurrence)
    for i, arg in enumerate((a, b, h0)):
        flat = np.asarray(arg).ravel()
        fd = np.zeros_like(flat)
        for j in range(flat.size):
            bump = np.zeros_like(flat)
            bump[j] = eps
            args = [a, b, h0]
            args[i] = (flat + bump).reshape(arg.shape)
            up = f(*args)
            args[i] = (flat - bump).reshape(arg.shape)
            fd[j] = (up - f(*args)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(ours[i]).ravel(), fd, atol=1e-8)


def test_complex_gradient_equals_the_sequential_scan():
    a, b, h0 = coefficients(True, seed=5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.abs(f(a, b, h0, False)) ** 2)
    for x, y in zip(jax.grad(loss(linear_recurrence), (0, 1))(a, b), jax.grad(loss(sequential), (0, 1))(a, b)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_bad_coefficients_are_clear_errors():
    a, b, h0 = coefficients()
    with pytest.raises(ValueError, match="`a` of shape"):
        linear_recurrence(a[:-1], b)
    with pytest.raises(ValueError, match="leading time axis"):
        linear_recurrence(1.0, 2.0)
    with pytest.raises(ValueError, match="pytree structure"):
        linear_recurrence({"x": a}, {"y": b})
    with pytest.raises(TypeError, match="`reverse`"):
        linear_recurrence(a, b, reverse="yes")


# --------------------------------------------------------------------------- parallel_bptt


@pytest.mark.parametrize("complex_state", [False, True])
def test_episode_equals_the_stepped_losses(complex_state):
    system, theta = diagonal_system(complex_state=complex_state), diagonal_theta(complex_state=complex_state)
    state, losses = system.init(theta, KEY), []
    for t in range(system.horizon):
        state, loss = system.step(theta, state, t)
        losses.append(loss)
    np.testing.assert_allclose(system.episode(theta, KEY), np.asarray(losses), atol=1e-12)


@pytest.mark.parametrize("complex_state", [False, True])
def test_parallel_bptt_equals_full_bptt_call_for_call(complex_state):
    """Same keys, same episodes: three consecutive calls of 3 workers agree to 1e-10, and
    the per-call loss and step count match."""
    system, theta = diagonal_system(complex_state=complex_state), diagonal_theta(complex_state=complex_state)
    ours, ref = unroll.parallel_bptt(system, num_workers=3), unroll.full_bptt(system, num_workers=3)
    s1, s2 = ours.init(theta, KEY), ref.init(theta, KEY)
    for i in range(3):
        key = jax.random.fold_in(KEY, i)
        g1, s1, info1 = jax.jit(ours.estimate)(theta, s1, key)
        g2, s2, info2 = jax.jit(ref.estimate)(theta, s2, key)
        for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
            np.testing.assert_allclose(x, y, atol=1e-10)
        assert float(info1["loss"]) == pytest.approx(float(info2["loss"]), abs=1e-12)
        assert int(info1["steps"]) == int(info2["steps"]) == 3 * system.horizon
    np.testing.assert_array_equal(jax.random.key_data(s1.workers.key), jax.random.key_data(s2.workers.key))


def test_rtrl_windows_average_to_parallel_bptt():
    """One worker's T / K consecutive RTRL windows cover its first episode: their mean is
    that episode's exact gradient, which parallel_bptt computes from the same key."""
    system, theta = diagonal_system(horizon=8), diagonal_theta()
    (exact,), _, _ = window_estimates(unroll.parallel_bptt(system), theta, 1, KEY)
    grads, _, _ = window_estimates(unroll.rtrl(system, truncation=2), theta, 4, KEY)
    mean = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    for x, y in zip(jax.tree_util.tree_leaves(mean), jax.tree_util.tree_leaves(exact)):
        np.testing.assert_allclose(x, y, atol=1e-10)


def test_a_system_without_a_parallel_form_is_refused():
    with pytest.raises(ValueError, match=r"needs the system's parallel form(.|\n)*full_bptt"):
        unroll.parallel_bptt(rnn_system())
    with pytest.raises(TypeError, match="`system.episode` must be a function"):
        unroll.parallel_bptt(rnn_system()._replace(episode=3))


def test_an_episode_that_returns_the_mean_is_refused_at_init():
    system, theta = diagonal_system(), diagonal_theta()
    bad = system._replace(episode=lambda theta, key: jnp.mean(system.episode(theta, key)))
    with pytest.raises(TypeError, match=r"shape \[horizon\] = \[8\], got float64\[\]"):
        unroll.parallel_bptt(bad).init(theta, KEY)


def test_parallel_bptt_trains_and_diagnoses_as_full_bptt():
    """Through ``unroll.train`` (4 Adam steps) and ``diagnostics.estimate_samples`` (3
    seeds), parallel_bptt gives full_bptt's numbers (1e-10)."""
    import optax

    from unroll.diagnostics import estimate_samples

    system, theta = diagonal_system(), diagonal_theta()
    runs = [
        unroll.train(make(system, num_workers=2), optax.adam(0.05), theta, KEY, 4, progress=False)
        for make in (unroll.parallel_bptt, unroll.full_bptt)
    ]
    for x, y in zip(jax.tree_util.tree_leaves(runs[0][0]), jax.tree_util.tree_leaves(runs[1][0])):
        np.testing.assert_allclose(x, y, atol=1e-10)
    np.testing.assert_allclose(runs[0][1]["loss"], runs[1][1]["loss"], atol=1e-12)
    samples = [estimate_samples(make(system), theta, KEY, 3, 2) for make in (unroll.parallel_bptt, unroll.full_bptt)]
    for x, y in zip(jax.tree_util.tree_leaves(samples[0]), jax.tree_util.tree_leaves(samples[1])):
        np.testing.assert_allclose(x, y, atol=1e-10)
