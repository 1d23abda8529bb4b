"""Reference quantities computed directly, without the window machinery."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll._system import check_against_theta, check_positive_int, check_system


def episode_loss(system, theta, key) -> jax.Array:
    """The mean loss ``(1/T) sum_{t<T} l_t`` of one whole episode (one ``lax.scan``)."""

    def body(state, t):
        return system.step(theta, state, t)

    _, losses = jax.lax.scan(body, system.init(theta, key), jnp.arange(system.horizon, dtype=jnp.int32))
    return jnp.mean(losses)


def exact_gradient(system, theta, key, num_episodes: int = 1):
    """The reference gradient: full BPTT of the mean episode loss, averaged over
    ``num_episodes`` episodes with keys ``jax.random.split(key, num_episodes)``."""
    check_system(system)
    num_episodes = check_positive_int(
        num_episodes,
        "num_episodes",
        "It counts the episodes averaged (keys split(key, num_episodes)), e.g. num_episodes=1.",
    )
    check_against_theta(system, theta, key)
    keys = jax.random.split(key, num_episodes)

    def objective(theta):
        return jnp.mean(jax.vmap(lambda key: episode_loss(system, theta, key))(keys))

    return jax.grad(objective)(theta)
