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

__all__ = ["RankOne", "uoro"]


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
    r"""Unbiased online recurrent optimization (Tallec & Ollivier 2017): a rank-one RTRL.

    The influence $J = \frac{d s}{d \theta}$ is kept as a rank-one, unbiased estimate
    $J \approx \tilde s\, \tilde\theta^\top$. Each step, with $\nu$ uniform in
    $\{-1, +1\}^n$, $A = \frac{\partial s'}{\partial s} \tilde s$ (a jvp) and
    $B = \nu^\top \frac{\partial s'}{\partial \theta}$ (a vjp), the step's gradient uses
    the influence before the update,

    $$
    \frac{d\ell}{d\theta} \approx \frac{\partial \ell}{\partial \theta}
        + \Big(\frac{\partial \ell}{\partial s} \tilde s\Big)\, \tilde\theta,
    \qquad
    \tilde s \leftarrow \rho_0 A + \rho_1 \nu,
    \qquad
    \tilde\theta \leftarrow \frac{\tilde\theta}{\rho_0} + \frac{B}{\rho_1},
    $$

    with the variance-minimizing $\rho_0 = \sqrt{|\tilde\theta| / |A|}$ and
    $\rho_1 = \sqrt{|B| / |\nu|}$, and $g = \frac{1}{K} \sum_{k<K} \frac{d\ell_{t+k}}{d\theta}$
    averaged over workers. An episode starts at $\tilde s = \nu$,
    $\tilde\theta = \nu^\top \frac{d s_0}{d \theta}$. Unbiased; high variance. Real states
    only.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`,
            with a real state (complex leaves are refused at `init`: use `rtrl`).
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); it sets how often
            an estimate is returned, not a truncation of the gradient.
        num_workers: $W$, independent trajectories, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        epsilon: $\varepsilon$, added to the norms in
            $\rho_0 = \sqrt{(|\tilde\theta| + \varepsilon) / (|A| + \varepsilon)}$ and
            $\rho_1 = \sqrt{(|B| + \varepsilon) / (|\nu| + \varepsilon)}$, which keeps them
            finite when a factor is zero (a positive float, default `1e-7`).

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        accumulator `acc` holds each trajectory's factors $\tilde s$, $\tilde\theta$ and the
        key of its $\pm 1$ draws; `info` has `loss` and `steps` ($W K$).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type; at `init`, a state with complex leaves.
        ValueError: `truncation` is out of $[1, T]$, `num_workers` is below 1, or `epsilon`
            is not positive and finite.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    epsilon = check_positive_float(
        epsilon, "epsilon", "it keeps UORO's rescaling rho0, rho1 finite when a factor is zero: try epsilon=1e-7."
    )
    return windowed(system, _rank_one_rule(system, epsilon), truncation=truncation, num_workers=num_workers)
