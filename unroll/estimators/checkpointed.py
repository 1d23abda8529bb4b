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

__all__ = ["checkpointed_bptt"]


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
    r"""Full BPTT storing at most `memory_budget` hidden states (binomial checkpointing).

    The exact gradient of `num_workers` whole episodes,

    $$
    g = \nabla_\theta \frac{1}{T} \sum_{t<T} \ell_t,
    $$

    the same estimate (and worker state, and `info`) as `full_bptt(system, num_workers=...)`,
    on the optimal binomial schedule of `unroll.checkpointing` (Griewank & Walther 2000;
    Gruslys et al. 2016): with $m$ stored states it takes

    $$
    C(T, m) = (r + 1)\, T - \binom{m + r}{m + 1}, \qquad r = \rho_m(T),
    $$

    step evaluations per episode (`unroll.checkpointing.plan`) instead of storing $O(T)$
    states. $m = 1$ recomputes every step from the start, $\frac{T (T + 1)}{2}$ evaluations;
    $m \ge T$ stores every state, $2 T - 1$. Besides the $m$ slots the computation holds a
    scratch slot, one working state, the state cotangent, one block of steps' activations
    and the $T$ scalar losses.

    The schedule is planned in closed form (well under a second at $T = 10^6$) and
    executed inside one compiled `lax.scan` over its ops: a chain of forward steps from a
    slot, whose steps between stores run as plain fused loops of `step` (the buffer is
    written only where the schedule stores a state), then the backward passes that follow
    it, each step differentiated by `jax.vjp` (in blocks of 4, unrolled). The compiled
    program is the same for every $T$; only its action arrays
    (`unroll.checkpointing.Program`: about 8 bytes per step) grow with it.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        num_workers: $W$, the episodes run per call (each a trajectory of its own, keeping
            its own stored states); the estimate is their mean. Default 1.
        memory_budget: the storage per episode, required. Either an int $m \ge 1$, the count
            of hidden states kept at once, the episode's initial state included; or a size
            in bytes for those states, a string such as `"64MiB"` (units B, kB, MB, GB, TB,
            KiB, MiB, GiB, TiB): $m = \lfloor \text{bytes} / \text{bytes of one state} \rfloor$,
            found from the state's shapes when `init` (or `estimate`) is traced
            (`unroll.checkpointing.budget_slots`).

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState`, as
        `full_bptt`'s. `info['steps']` is `num_workers * T` (the episodes' steps, as for
        `full_bptt`), not the recomputations.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or `num_workers` or a count
            `memory_budget` is not an int.
        ValueError: `num_workers` or a count `memory_budget` is below 1, or a bytes string
            cannot be parsed; at `init`, a bytes budget below one state (the message names
            the minimum).
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
