"""Checkpointed BPTT: full BPTT's gradient with at most ``m`` stored states, on the optimal
binomial schedule of ``unroll.checkpointing`` (Griewank & Walther 2000; Gruslys et al.
2016), executed by ``unroll.checkpointing.checkpointed_episodes``."""

from __future__ import annotations

import functools

import jax

from unroll._constructor import keyword_only
from unroll._engine import flatten_trajectories, unflatten_trajectories
from unroll._system import check_memory_budget, check_num_workers, check_system, inexact_leaves
from unroll.builder import plain_rule, windowed
from unroll.checkpointing import Program, budget_slots, checkpointed_episodes, plan, program
from unroll.contract import Estimator, Gradient


@functools.lru_cache(maxsize=16)
def _program(horizon: int, slots: int) -> Program:
    return program(plan(horizon, slots))


def _episode_state(states):
    """One episode's state from the ``[W, P, ...]`` trajectories' states (shapes only)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype), states)


def _checkpointed_gradient(system, schedule):
    """A ``WindowGradient`` for whole episodes: each trajectory starts its next episode
    (``Window.restart``, differentiated by one vjp), the executor backpropagates them
    all at once (the trajectories as one batch axis) in the plan's memory
    (``schedule(states)``, at trace time), and the cotangents of the initial states flow
    into ``init``."""

    def gradient(window, theta, shared):
        def start(theta):
            states, finish = window.restart(theta)
            return inexact_leaves(states), (states, finish)

        _, init_vjp, (states, finish) = jax.vjp(start, theta, has_aux=True)
        shape = jax.tree_util.tree_leaves(states)[0].shape[:2]  # [W, P]
        grad, ct0, losses, final, _ = checkpointed_episodes(
            system, schedule(states), theta, flatten_trajectories(states)
        )
        ct0, losses, final = unflatten_trajectories((ct0, losses, final), shape)
        (d_init,) = init_vjp(ct0)
        num = window.num_steps // system.horizon  # trajectories: the estimate is their mean
        grad = jax.tree_util.tree_map(lambda g, d: (g + d) / num, grad, d_init)
        return Gradient(grad, finish(final, losses), shared)

    return gradient


@keyword_only
def checkpointed_bptt(system, *, num_workers: int = 1, memory_budget: int | str) -> Estimator:
    """Full BPTT storing at most ``memory_budget`` hidden states (binomial checkpointing,
    Griewank & Walther 2000; Gruslys et al. 2016): the exact gradient
    ``grad (1/T) sum_t l_t`` of ``num_workers`` whole episodes, the same estimate (and
    worker state, and ``info``) as ``full_bptt(system, num_workers=...)``, in
    ``C(T, m) = (r + 1) T - binom(m + r, m + 1)`` step evaluations per episode
    (``r = rho_m(T)``, ``unroll.checkpointing.plan``) instead of ``O(T)`` stored states.

    ``memory_budget`` is per episode (each of the ``num_workers`` trajectories keeps its
    own states), either

    * a count ``m`` of the hidden states kept at once, the episode's initial state
      included (1 is the minimum: every step is then recomputed from the start,
      ``T (T + 1) / 2`` evaluations; ``m >= T`` stores every state, ``2 T - 1``); or
    * bytes for those states, a string such as ``"64MiB"`` (units B, kB, MB, GB, KiB,
      MiB, GiB, ...): ``m = floor(bytes / bytes of one state)``, found from the state's
      shapes when ``init`` (or ``estimate``) is traced
      (``unroll.checkpointing.budget_slots``). A budget below one state is refused there,
      naming the minimum.

    Besides those slots the computation holds a scratch slot, one working state, the
    state cotangent, one block of steps' activations and the ``T`` scalar losses.

    The schedule is planned in closed form (well under a second at ``T = 10^6``) and
    executed inside one compiled ``lax.scan`` over its ops (a chain of forward steps from
    a slot, storing the states the schedule keeps, then the backward passes that follow
    it), each step differentiated by ``jax.vjp``; the inner loops run blocks of 4 steps,
    unrolled. The compiled program is the same for every ``T``; only its action arrays
    (``unroll.checkpointing.Program``: about 8 bytes per step) grow with it.
    ``info['steps']`` is ``num_workers * T`` (the episodes' steps, as for ``full_bptt``),
    not the recomputations.
    """
    check_system(system)
    num_workers = check_num_workers(num_workers)
    budget = check_memory_budget(memory_budget)
    schedule = lambda states: _program(system.horizon, budget_slots(budget, _episode_state(states)))
    estimator = windowed(
        system,
        plain_rule(system),
        truncation=system.horizon,
        num_workers=num_workers,
        gradient=_checkpointed_gradient(system, schedule),
        stagger=False,
    )

    def init(theta, key):
        state = estimator.init(theta, key)
        schedule(state.workers.state)  # a bytes budget below one state fails here, not at the first estimate
        return state

    return Estimator(init, estimator.estimate)
