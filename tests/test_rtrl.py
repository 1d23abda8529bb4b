"""RTRL: at a fixed theta, its windows average to the exact episode gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import rnn_system, rnn_theta, tree_mean, window_estimates
from tests.test_forward import _first_episode_key, _noisy_counter_system
from unroll.estimators.rtrl import influence_pattern

KEY = jax.random.key(0)


def gru_system(n=3, m=2, horizon=7, seed=0):
    """A GRU cell on a fixed input sequence, readout loss per step."""
    inputs = jax.random.normal(jax.random.key(seed + 1), (horizon, m))
    targets = jnp.sin(jnp.arange(horizon) / 2.0)

    def init(theta, key):
        return jnp.zeros(n, theta["Wz"].dtype)

    def step(theta, h, t):
        x = inputs[t].astype(h.dtype)
        z = jax.nn.sigmoid(theta["Wz"] @ h + theta["Uz"] @ x)
        r = jax.nn.sigmoid(theta["Wr"] @ h + theta["Ur"] @ x)
        candidate = jnp.tanh(theta["Wh"] @ (r * h) + theta["Uh"] @ x)
        h = (1 - z) * h + z * candidate
        return h, 0.5 * (theta["readout"] @ h - targets[t]) ** 2

    return unroll.System(init, step, horizon)


def gru_theta(n=3, m=2, seed=0):
    keys = jax.random.split(jax.random.key(seed), 7)
    shapes = {"Wz": (n, n), "Uz": (n, m), "Wr": (n, n), "Ur": (n, m), "Wh": (n, n), "Uh": (n, m), "readout": (n,)}
    return {name: 0.5 * jax.random.normal(k, shape, jnp.float64) for k, (name, shape) in zip(keys, shapes.items())}


def diagonal_system(n=4, horizon=7, seed=0):
    """LRU-style complex diagonal linear recurrence: ``s' = lambda * s + B x_t``,
    ``lambda = exp(-exp(nu) + i phase)``, loss ``0.5 (Re(C s') - y_t)^2``."""
    inputs = jax.random.normal(jax.random.key(seed + 1), (horizon,))
    targets = jnp.cos(jnp.arange(horizon) / 3.0)

    def init(theta, key):
        return jnp.zeros(n, jnp.complex128)

    def step(theta, s, t):
        lam = jnp.exp(-jnp.exp(theta["nu"]) + 1j * theta["phase"])
        s = lam * s + (theta["b_re"] + 1j * theta["b_im"]) * inputs[t]
        out = jnp.real((theta["c_re"] + 1j * theta["c_im"]) @ s)
        return s, 0.5 * (out - targets[t]) ** 2

    return unroll.System(init, step, horizon)


def diagonal_theta(n=4, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    names = ["nu", "phase", "b_re", "b_im", "c_re", "c_im"]
    theta = {name: 0.5 * jax.random.normal(k, (n,), jnp.float64) for k, name in zip(keys, names)}
    theta["nu"] = theta["nu"] - 1.0
    return theta


PROBLEMS = {
    "tanh_rnn": lambda: (rnn_system(n=3, m=2, horizon=7), rnn_theta(n=3, m=2)),
    "tanh_rnn_learned_h0": lambda: (rnn_system(n=3, m=2, horizon=7, learned_h0=True), rnn_theta(n=3, m=2)),
    "gru": lambda: (gru_system(), gru_theta()),
    "complex_diagonal": lambda: (diagonal_system(), diagonal_theta()),
}


@functools.cache
def _exact(problem):
    """The exact episode gradient of a problem, computed once (the systems are deterministic)."""
    system, theta = PROBLEMS[problem]()
    return unroll.exact_gradient(system, theta, KEY)


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("truncation, num_workers", [(7, 1), (1, 1), (3, 1), (3, 3)])
@pytest.mark.parametrize("sparse", [False, True])
def test_windows_average_to_full_bptt(problem, truncation, num_workers, sparse):
    """Deterministic systems: 7 windows of 3 steps cover 3 whole episodes (windows straddle
    episode ends; with 3 workers, staggered), so their mean is the exact episode gradient,
    with the dense influence and with the compressed one (``sparse=True``)."""
    system, theta = PROBLEMS[problem]()
    exact = _exact(problem)
    est = unroll.rtrl(system, truncation=truncation, num_workers=num_workers, sparse=sparse)
    grads, _, info = window_estimates(est, theta, 7, KEY)  # 7 * truncation is a multiple of the horizon 7
    assert _max_diff(tree_mean(grads), exact) < 1e-10
    assert int(info["steps"]) == num_workers * truncation


def test_one_window_one_episode_with_keys_and_counters():
    """A window of a whole episode is that episode's gradient, on a state with an int
    counter and a PRNG key (no tangents for those leaves)."""
    system = _noisy_counter_system()
    theta = jnp.asarray([0.3, -0.5, 0.8])
    est = unroll.rtrl(system, truncation=system.horizon)
    grad, _, _ = est.estimate(theta, est.init(theta, KEY), KEY)
    episode_key = _first_episode_key(KEY)
    exact = jax.grad(lambda th: unroll.episode_loss(system, th, episode_key))(theta)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(exact), rtol=1e-10, atol=1e-14)


def test_truncated_bptt_differs_where_rtrl_does_not():
    """The same windows under truncated BPTT are biased: RTRL's exactness is not a tautology."""
    system, theta = PROBLEMS["tanh_rnn"]()
    grads, _, _ = window_estimates(unroll.truncated_bptt(system, truncation=1), theta, 7, KEY)
    assert _max_diff(tree_mean(grads), _exact("tanh_rnn")) > 1e-3


@pytest.mark.parametrize("problem", PROBLEMS)
def test_fast_path_equals_general_path(problem):
    """The compressed influence gives the dense path's estimates window by window (not only
    on average), with staggered workers and windows that straddle episode ends."""
    system, theta = PROBLEMS[problem]()
    dense, _, _ = window_estimates(unroll.rtrl(system, truncation=3, num_workers=2, sparse=False), theta, 5, KEY)
    fast, state, _ = window_estimates(unroll.rtrl(system, truncation=3, num_workers=2, sparse=True), theta, 5, KEY)
    assert _max_diff(fast, dense) < 1e-12
    pattern = influence_pattern(system, theta, KEY)
    assert state.acc.influence.shape == (2, 1, pattern.num_colors, pattern.mask.shape[0])


@pytest.mark.parametrize("n", [4, 16, 64])
def test_diagonal_recurrence_takes_the_fast_path_with_colours_independent_of_width(n):
    """A complex diagonal recurrence of width n: the influence is kept as 4 colours
    (nu, phase, b_re, b_im of each unit touch that unit only; c_re, c_im move no state),
    so a step costs 4 jvps and stores [4, 2n] numbers, whatever n: O(n), not O(n^2 p)."""
    system, theta = diagonal_system(n=n), diagonal_theta(n=n)
    pattern = influence_pattern(system, theta, KEY)
    assert pattern.compressed and pattern.num_colors == 4
    state = unroll.rtrl(system, truncation=3).init(theta, KEY)  # default: picked automatically
    assert state.acc.influence.shape == (1, 1, 4, 2 * n)


@pytest.mark.parametrize("problem", ["tanh_rnn", "gru"])
def test_dense_recurrences_keep_the_dense_path_by_default(problem):
    """Every parameter of W reaches every unit: compressing would need p > N jvps."""
    system, theta = PROBLEMS[problem]()
    pattern = influence_pattern(system, theta, KEY)
    assert not pattern.compressed and pattern.num_colors > pattern.mask.shape[0]
    assert pattern.mask[:, np.asarray(pattern.color) >= 0].all()  # RTRL keeps every reachable entry
    state = unroll.rtrl(system, truncation=3).init(theta, KEY)
    assert state.acc.influence.shape[2:] == pattern.mask.shape


def test_sparse_flag_is_checked():
    system, _ = PROBLEMS["tanh_rnn"]()
    with pytest.raises(TypeError, match="sparse"):
        unroll.rtrl(system, truncation=3, sparse="yes")


def test_a_system_closing_over_traced_values_falls_back_or_says_why():
    """Inside jit, a system built from traced arrays has no concrete pattern: rtrl falls back
    to the dense influence (same gradient); sparse=True says what stops it."""
    system, theta = PROBLEMS["complex_diagonal"]()
    expected, _, _ = window_estimates(unroll.rtrl(system, truncation=7), theta, 1, KEY)

    def run(scale, sparse):
        traced = unroll.System(system.init, lambda th, s, t: system.step(th, s * scale, t), system.horizon)
        est = unroll.rtrl(traced, truncation=7, sparse=sparse)
        return est.estimate(theta, est.init(theta, KEY), KEY)[0]

    grad = jax.jit(lambda scale: run(scale, None))(1.0)
    assert _max_diff(grad, expected[0]) < 1e-12
    with pytest.raises(ValueError, match="sparse=True.*trace time"):
        jax.jit(lambda scale: run(scale, True))(1.0)
