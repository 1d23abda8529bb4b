"""The held-out evaluation every task shares: whole episodes on fixed keys."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from unroll._system import System

__all__ = ["PARALLEL_STEPS_PER_BATCH", "episode_evaluator", "map_episodes", "run_episode"]


# episodes evaluated at once in the parallel form hold about this many steps together
# (its states are [T, ...] per episode: at T = 1e5 one episode at a time)
PARALLEL_STEPS_PER_BATCH = 2**17


def run_episode(system: System, theta, key):
    """One whole episode as a ``lax.scan``: ``(final state, losses [T])``."""
    return jax.lax.scan(
        lambda state, t: system.step(theta, state, t), system.init(theta, key), jnp.arange(system.horizon)
    )


def map_episodes(one: Callable, keys, horizon: int, parallel: bool):
    """``one(key)`` for every key, stacked: a ``vmap`` of the step form (its scan holds one
    state per episode), or, for the parallel form (``[T, ...]`` per episode), a
    ``lax.map`` over batches of at most ``PARALLEL_STEPS_PER_BATCH // horizon`` episodes."""
    if not parallel:
        return jax.vmap(one)(keys)
    batch_size = max(1, min(len(keys), PARALLEL_STEPS_PER_BATCH // horizon))
    return jax.lax.map(one, keys, batch_size=batch_size)


def episode_evaluator(
    system: System, key, num_episodes: int, final_metrics: Callable | None = None, extra: Callable | None = None
) -> Callable:
    """``theta -> {"objective": mean episode loss, **final_metrics(final state), **extra(theta)}``
    over ``num_episodes`` fixed episodes (``split(key, num_episodes)``), the metrics of the
    final states averaged over episodes; jit-able. A system with the parallel form
    (``system.episode``) is evaluated by it when no ``final_metrics`` need the final state."""
    keys = jax.random.split(key, num_episodes)
    parallel = final_metrics is None and getattr(system, "episode", None) is not None

    def one(theta, key):
        if parallel:
            return {"objective": jnp.mean(system.episode(theta, key))}
        state, losses = run_episode(system, theta, key)
        return {"objective": jnp.mean(losses), **({} if final_metrics is None else final_metrics(state))}

    def evaluate(theta):
        out = map_episodes(lambda k: one(theta, k), keys, system.horizon, parallel)
        out = jax.tree_util.tree_map(jnp.mean, out)
        return {**out, **({} if extra is None else extra(theta))}

    return evaluate
