"""The directional (forward) gradient (Baydin et al. 2022; Silver et al. 2022).

At an episode start draw ``v ~ N(0, I_p)`` and keep it for the episode; carry the tangent
``u_t = J_t v`` (``J_t = d s_t / d theta``) with one jvp per step,
``(s', l), (u', dl) = jvp(step, (theta, s), (v, u))``. The window estimate is
``(1/(N K)) sum_i sum_k dl_{i,k} v_i`` over the ``N`` directions; it is unbiased because
``E[v v^T] = I``, and ``E|g|^2 = (p + 2) |grad|^2`` for one direction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import check_window, keyword_only
from unroll._system import (
    check_positive_int,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll._tree import normal_like, tree_scale
from unroll.builder import windowed
from unroll.contract import EpisodeStart, Estimator, Rule, Step

__all__ = ["Tangent", "forward_gradient"]


class Tangent(NamedTuple):
    """A forward-gradient trajectory's accumulator: its episode's ``direction`` ``v``
    (theta-shaped) and ``tangent``, ``d state / d theta . v`` on the state's inexact leaves."""

    direction: Any
    tangent: list


def _jvp_init(system, theta, key, direction):
    """``(s_0, d s_0 / d theta . direction)``, the tangent on the inexact leaves only."""

    def init(theta):
        state = system.init(theta, key)
        return inexact_leaves(state), state

    _, tangent, state = jax.jvp(init, (theta,), (direction,), has_aux=True)
    return state, tangent


def _jvp_step(system, theta, state, t, direction, tangent):
    """One step and its tangent: ``(s', l), (u', dl) = jvp(step, (theta, s), (v, u))``."""

    def step(theta, leaves):
        new_state, loss = system.step(theta, with_inexact_leaves(state, leaves), t)
        return (inexact_leaves(new_state), loss), new_state

    (_, loss), (tangent, dloss), new_state = jax.jvp(
        step, (theta, inexact_leaves(state)), (direction, tangent), has_aux=True
    )
    return new_state, loss, tangent, dloss


def _tangent_rule(system) -> Rule:
    def start(theta, key, noise_key, _):
        direction = normal_like(noise_key, theta)
        state, tangent = _jvp_init(system, theta, key, direction)
        return EpisodeStart(state, Tangent(direction, tangent))

    def step(theta, state, t, acc, _):
        state, loss, tangent, dloss = _jvp_step(system, theta, state, t, acc.direction, acc.tangent)
        return Step(state, Tangent(acc.direction, tangent), loss, tree_scale(jnp.real(dloss), acc.direction))

    return Rule(start, step)


@keyword_only
def forward_gradient(system, *, truncation: int, num_workers: int = 1, num_directions: int = 1) -> Estimator:
    r"""The directional (forward) gradient (Baydin et al. 2022; Silver et al. 2022).

    At an episode start each trajectory draws a direction $v \sim \mathcal N(0, I_p)$ and
    keeps it for the episode; it carries the tangent $u_t = J_t v$
    ($J_t = \frac{d s_t}{d \theta}$) with one jvp per step,
    `(s', l), (u', dl) = jvp(step, (theta, s), (v, u))`, so the directional derivative
    $\frac{d\ell}{d\theta} \cdot v$ is carried online through the whole episode (no
    truncation bias). The window estimate is

    $$
    g = \frac{1}{N K} \sum_{i=1}^{N} \sum_{k<K}
        \Big(\frac{d\ell_{i,k}}{d\theta} \cdot v_i\Big)\, v_i,
    $$

    averaged over workers: unbiased because $\mathbb E[v v^\top] = I$, with
    $\mathbb E|g|^2 = (p + 2)\, |\nabla L|^2$ for one direction.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); it sets how often
            an estimate is returned, not a truncation of the gradient.
        num_workers: $W$, independent groups of directions, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        num_directions: $N$, the random directions per worker, each a trajectory of its own
            sharing the worker's episode keys (an int $\ge 1$, default 1); more directions,
            lower variance, $W N K$ system steps (and jvps) per call.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        trajectories have leading axes $[W, N]$ and whose accumulators hold each one's
        direction $v$ and tangent $u$; `info` has `loss` and `steps` ($W N K$).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument is not an int.
        ValueError: `truncation` is out of $[1, T]$, or a count is below 1.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    num_directions = check_positive_int(
        num_directions,
        "num_directions",
        "It counts the random directions v drawn per worker: use an int >= 1 (more directions, lower variance).",
    )
    return windowed(
        system, _tangent_rule(system), truncation=truncation, num_workers=num_workers, num_particles=num_directions
    )
