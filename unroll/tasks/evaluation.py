"""The held-out evaluation every task shares: whole episodes on fixed keys."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from unroll.system import System


def run_episode(system: System, theta, key):
    """One whole episode as a ``lax.scan``: ``(final state, losses [T])``."""
    return jax.lax.scan(
        lambda state, t: system.step(theta, state, t), system.init(theta, key), jnp.arange(system.horizon)
    )


def episode_evaluator(
    system: System, key, num_episodes: int, final_metrics: Callable | None = None, extra: Callable | None = None
) -> Callable:
    """``theta -> {"objective": mean episode loss, **final_metrics(final state), **extra(theta)}``
    over ``num_episodes`` fixed episodes (``split(key, num_episodes)``), the metrics of the
    final states averaged over episodes; jit-able."""
    keys = jax.random.split(key, num_episodes)

    def one(theta, key):
        state, losses = run_episode(system, theta, key)
        return {"objective": jnp.mean(losses), **({} if final_metrics is None else final_metrics(state))}

    def evaluate(theta):
        out = jax.tree_util.tree_map(jnp.mean, jax.vmap(lambda k: one(theta, k))(keys))
        return {**out, **({} if extra is None else extra(theta))}

    return evaluate
