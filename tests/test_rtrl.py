"""RTRL: at a fixed theta, its windows average to the exact episode gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import rnn_system, rnn_theta, tree_mean, window_estimates
from tests.test_forward import _first_episode_key, _noisy_counter_system

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


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("truncation, num_workers", [(7, 1), (1, 1), (3, 1), (3, 3)])
def test_windows_average_to_full_bptt(problem, truncation, num_workers):
    """Deterministic systems: 7 windows of 3 steps cover 3 whole episodes (windows straddle
    episode ends; with 3 workers, staggered), so their mean is the exact episode gradient."""
    system, theta = PROBLEMS[problem]()
    exact = unroll.exact_gradient(system, theta, KEY)
    est = unroll.rtrl(system, truncation=truncation, num_workers=num_workers)
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
    assert _max_diff(tree_mean(grads), unroll.exact_gradient(system, theta, KEY)) > 1e-3
