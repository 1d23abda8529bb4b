"""Unbiased online recurrent optimization (Tallec & Ollivier 2017): RTRL's influence kept
as a rank-one, unbiased estimate ``J ~ s~ theta~^T``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import check_window, keyword_only
from unroll._system import (
    check_positive_float,
    check_real_state,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll._tree import rademacher_like, tree_norm
from unroll.builder import windowed
from unroll.contract import EpisodeStart, Estimator, Rule, Step


class RankOne(NamedTuple):
    """A UORO trajectory's accumulator: the factors of ``J ~ s~ theta~^T`` and the key of
    its ``+-1`` draws."""

    state_factor: list  # s~: one array per inexact state leaf
    theta_factor: Any  # theta~: theta-shaped
    key: jax.Array


def _rank_one_rule(system, epsilon: float) -> Rule:
    def start(theta, key, noise_key, _):
        def init(theta):
            state = system.init(theta, key)
            return inexact_leaves(state), state

        leaves, pullback, state = jax.vjp(init, theta, has_aux=True)
        check_real_state("uoro", leaves)
        noise_key, sub = jax.random.split(noise_key)
        nu = rademacher_like(sub, leaves)
        (theta_factor,) = pullback(nu)
        return EpisodeStart(state, RankOne(nu, theta_factor, noise_key))

    def step(theta, state, t, acc, _):
        def step_of(theta, leaves):
            new_state, loss = system.step(theta, with_inexact_leaves(state, leaves), t)
            return (inexact_leaves(new_state), loss), new_state

        leaves = inexact_leaves(state)
        (new_leaves, loss), (a, dloss_along), new_state = jax.jvp(
            lambda lv: step_of(theta, lv), (leaves,), (acc.state_factor,), has_aux=True
        )
        _, pullback, _ = jax.vjp(lambda th: step_of(th, leaves), theta, has_aux=True)
        key, sub = jax.random.split(acc.key)
        nu = rademacher_like(sub, new_leaves)
        (b,) = pullback((nu, jnp.zeros_like(loss)))
        (dloss_dtheta,) = pullback(([jnp.zeros_like(x) for x in new_leaves], jnp.ones_like(loss)))
        gradient = jax.tree_util.tree_map(lambda d, f: d + dloss_along * f, dloss_dtheta, acc.theta_factor)
        rho0 = jnp.sqrt((tree_norm(acc.theta_factor) + epsilon) / (tree_norm(a) + epsilon))
        rho1 = jnp.sqrt((tree_norm(b) + epsilon) / (tree_norm(nu) + epsilon))
        state_factor = [rho0 * x + rho1 * n for x, n in zip(a, nu)]
        theta_factor = jax.tree_util.tree_map(lambda f, g: f / rho0 + g / rho1, acc.theta_factor, b)
        return Step(new_state, RankOne(state_factor, theta_factor, key), loss, gradient)

    return Rule(start, step)


@keyword_only
def uoro(system, *, truncation: int, num_workers: int = 1, epsilon: float = 1e-7) -> Estimator:
    """Unbiased online recurrent optimization (Tallec & Ollivier 2017).

    The influence is kept as a rank-one ``J ~ s~ theta~^T``. Each step, with
    ``nu`` uniform in ``{-1, +1}^n``, ``A = ds'/ds s~`` (a jvp) and
    ``B = nu^T ds'/dtheta`` (a vjp), the step's gradient is
    ``dl/dtheta + (dl/ds s~) theta~`` (the influence before the update), then
    ``s~ <- rho0 A + rho1 nu`` and ``theta~ <- theta~ / rho0 + B / rho1`` with the
    variance-minimizing ``rho0 = sqrt(|theta~| / |A|)``, ``rho1 = sqrt(|B| / |nu|)``
    (``epsilon`` keeps them finite). An episode starts at ``s~ = nu``,
    ``theta~ = nu^T d s_0 / d theta``. Unbiased; high variance. Real states only.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    epsilon = check_positive_float(
        epsilon, "epsilon", "it keeps UORO's rescaling rho0, rho1 finite when a factor is zero: try epsilon=1e-7."
    )
    return windowed(system, _rank_one_rule(system, epsilon), truncation=truncation, num_workers=num_workers)
