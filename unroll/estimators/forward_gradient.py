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


class Tangent(NamedTuple):
    """A forward-gradient trajectory's accumulator: its episode's ``direction`` ``v``
    (theta-shaped) and ``tangent``, ``d state / d theta . v`` on the state's inexact leaves."""

    direction: Any
    tangent: list


def jvp_init(system, theta, key, direction):
    """``(s_0, d s_0 / d theta . direction)``, the tangent on the inexact leaves only."""

    def init(theta):
        state = system.init(theta, key)
        return inexact_leaves(state), state

    _, tangent, state = jax.jvp(init, (theta,), (direction,), has_aux=True)
    return state, tangent


def jvp_step(system, theta, state, t, direction, tangent):
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
        state, tangent = jvp_init(system, theta, key, direction)
        return EpisodeStart(state, Tangent(direction, tangent))

    def step(theta, state, t, acc, _):
        state, loss, tangent, dloss = jvp_step(system, theta, state, t, acc.direction, acc.tangent)
        return Step(state, Tangent(acc.direction, tangent), loss, tree_scale(jnp.real(dloss), acc.direction))

    return Rule(start, step)


@keyword_only
def forward_gradient(system, *, truncation: int, num_workers: int = 1, num_directions: int = 1) -> Estimator:
    """Directional gradient ``g = (1/(N K)) sum_i sum_k (dl_{i,k}/dtheta . v_i) v_i`` with the
    directional derivative carried online through the whole episode (no truncation bias);
    ``N = num_directions`` directions per worker, each a trajectory of its own."""
    truncation, num_workers = check_window(system, truncation, num_workers)
    num_directions = check_positive_int(
        num_directions,
        "num_directions",
        "It counts the random directions v drawn per worker: use an int >= 1 (more directions, lower variance).",
    )
    return windowed(
        system, _tangent_rule(system), truncation=truncation, num_workers=num_workers, num_particles=num_directions
    )
