"""Reference quantities computed directly, without the window machinery."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll._system import check_against_theta, check_positive_int, check_system


def episode_loss(system, theta, key) -> jax.Array:
    r"""The mean loss of one whole episode, $\frac{1}{T} \sum_{t<T} \ell_t$, by one `lax.scan`.

    The episode starts at `system.init(theta, key)` and runs `system.step` for $T$ =
    `system.horizon` steps; differentiable in `theta` (`exact_gradient` is its gradient).

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        theta: the outer parameters, a pytree of float arrays.
        key: the JAX PRNG key the episode's `init` receives.

    Returns:
        A float scalar array, the episode's mean per-step loss.
    """

    def body(state, t):
        return system.step(theta, state, t)

    _, losses = jax.lax.scan(body, system.init(theta, key), jnp.arange(system.horizon, dtype=jnp.int32))
    return jnp.mean(losses)


def exact_gradient(system, theta, key, num_episodes: int = 1):
    r"""The reference gradient: full BPTT of the mean episode loss, averaged over episodes.

    $$
    \nabla_\theta \frac{1}{E} \sum_{e<E} \frac{1}{T} \sum_{t<T} \ell_t^{(e)},
    $$

    over $E$ = `num_episodes` episodes with keys `jax.random.split(key, num_episodes)`,
    each run by `episode_loss`. The quantity every estimator is tested against.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`;
            checked against `theta` (by tracing `init` and `step`) before anything runs.
        theta: the outer parameters, a pytree of real float arrays.
        key: the JAX PRNG key the episodes' keys are split from.
        num_episodes: $E$, the episodes averaged (an int $\ge 1$, default 1).

    Returns:
        The gradient, with the structure of `theta`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, `theta` has leaves that are
            not float arrays, `init`/`step` return the wrong structures, or `num_episodes`
            is not an int.
        ValueError: `num_episodes` is below 1, or `system.horizon` is not positive.
    """
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
