"""Checkpointed BPTT: full BPTT's gradient with at most ``m`` stored states, on the
schedule of ``unroll.checkpointing`` (Gruslys et al. 2016), executed by
``unroll.checkpointing.checkpointed_episode``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll.checkpointing import checkpointed_episode, plan, program
from unroll.system import check_memory_budget, check_num_workers, check_system, inexact_leaves
from unroll.window import Estimator, Gradient, keyword_only, plain_rule, windowed


def _checkpointed_gradient(system, schedule):
    """A ``WindowGradient`` for whole episodes: each trajectory starts its next episode
    (``Window.restart``, differentiated by one vjp), the executor backpropagates it in
    the plan's memory, and the cotangent of the initial state flows into ``init``."""

    def gradient(window, theta, extra):
        def start(theta):
            states, finish = window.restart(theta)
            return inexact_leaves(states), (states, finish)

        _, init_vjp, (states, finish) = jax.vjp(start, theta, has_aux=True)
        episode = lambda state: checkpointed_episode(system, schedule, theta, state)[:4]
        grads, ct0, losses, final = jax.vmap(jax.vmap(episode))(states)
        (d_init,) = init_vjp(ct0)
        num = window.num_steps // system.horizon  # trajectories: the estimate is their mean
        grad = jax.tree_util.tree_map(lambda g, d: jnp.sum(g, axis=(0, 1)) / num + d / num, grads, d_init)
        return Gradient(grad, finish(final, losses), extra)

    return gradient


@keyword_only
def checkpointed_bptt(system, *, num_workers: int = 1, memory_budget: int) -> Estimator:
    """Full BPTT storing at most ``memory_budget`` hidden states (Gruslys et al. 2016,
    BPTT-HSM): the exact gradient ``grad (1/T) sum_t l_t`` of ``num_workers`` whole
    episodes, the same estimate (and worker state, and ``info``) as
    ``full_bptt(system, num_workers=...)``, in ``C(T, memory_budget)`` step evaluations
    per episode (``unroll.checkpointing.plan``) instead of ``O(T)`` stored states.

    ``memory_budget`` counts the hidden states kept at once per episode, the episode's
    initial state included (1 is the minimum: every step is then recomputed from the
    start, ``T (T + 1) / 2`` evaluations). Besides those slots the computation holds a
    scratch slot, one working state, the state cotangent, one block of steps'
    activations and the ``T`` scalar losses.

    The schedule is planned at construction and executed inside one compiled ``lax.scan``
    over its ops (a chain of forward steps from a slot, storing the states the schedule
    keeps, then the backward passes that follow it), each step differentiated by
    ``jax.vjp``; the inner loops run blocks of 4 steps, unrolled, so loop overhead is paid
    once per block. The program size does not grow with ``T``.
    ``info['steps']`` is ``num_workers * T`` (the episodes' steps, as for ``full_bptt``),
    not the recomputations.
    """
    check_system(system)
    num_workers = check_num_workers(num_workers)
    memory_budget = check_memory_budget(memory_budget)
    schedule = program(plan(system.horizon, memory_budget))
    return windowed(
        system,
        plain_rule(system),
        truncation=system.horizon,
        num_workers=num_workers,
        gradient=_checkpointed_gradient(system, schedule),
        stagger=False,
    )
