"""Forward (directional) gradients against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np

import unroll
from tests.stochastic import THETA, exact, linear_quadratic, stream_averages, z_scores


def _first_episode_key(init_key):
    """The data key of worker 0's first episode (see unroll.contract and unroll._engine)."""
    worker_key = jax.random.split(init_key, 1)[0]
    return jax.random.split(worker_key, 3)[1]


def _noisy_counter_system(horizon=5):
    """A state with an int counter and a PRNG key (no tangents) beside float leaves."""

    def init(theta, key):
        return {"h": jnp.tanh(theta[:2]), "count": jnp.int32(0), "key": key}

    def step(theta, state, t):
        key, sub = jax.random.split(state["key"])
        x = jax.random.normal(sub, (2,), theta.dtype)
        h = jnp.tanh(theta[2] * state["h"] + x * theta[:2])
        loss = jnp.sum((h - 0.3) ** 2) * (1.0 + state["count"])
        return {"h": h, "count": state["count"] + 1, "key": key}, loss

    return unroll.System(init, step, horizon)


def test_one_episode_is_directional_derivative_times_direction():
    system = _noisy_counter_system()
    theta = jnp.asarray(THETA)
    init_key = jax.random.key(4)
    est = unroll.forward_gradient(system, truncation=system.horizon, num_directions=1)
    state = est.init(theta, init_key)
    grad, state, _ = jax.jit(est.estimate)(theta, state, jax.random.key(0))
    v = np.asarray(state.acc.direction)[0, 0]
    episode_key = _first_episode_key(init_key)
    exact_grad = np.asarray(jax.grad(lambda th: unroll.episode_loss(system, th, episode_key))(theta))
    np.testing.assert_allclose(np.asarray(grad), np.dot(exact_grad, v) * v, rtol=1e-10, atol=1e-12)


def test_unbiased_with_staggered_workers_and_straddling_windows():
    system = linear_quadratic(7)
    est = unroll.forward_gradient(system, truncation=3, num_workers=3, num_directions=2)
    samples = stream_averages(est, jnp.asarray(THETA), jax.random.key(0), 4000, 7)
    z = z_scores(samples, exact(7))
    print(f"forward_gradient z-scores {np.round(z, 2)}")
    assert np.all(np.abs(z) < 4), z


def test_second_moment_is_p_plus_2_times_squared_norm():
    """E|(g.v) v|^2 = (p + 2) |g|^2 for v ~ N(0, I_p)."""
    system = linear_quadratic(7, target_noise=0.0)
    est = unroll.forward_gradient(system, truncation=7, num_directions=1)
    samples = stream_averages(est, jnp.asarray(THETA), jax.random.key(1), 8000, 1)
    squared = np.sum(samples**2, axis=1)
    expected = (THETA.size + 2) * np.sum(exact(7) ** 2)
    z = (squared.mean() - expected) / (squared.std(ddof=1) / np.sqrt(squared.size))
    print(f"E|g|^2 = {squared.mean():.4f} vs (p+2)|grad|^2 = {expected:.4f} (z = {z:.2f})")
    assert abs(z) < 4, z
