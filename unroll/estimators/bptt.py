"""Backpropagation through time: full and truncated.

Full BPTT: ``grad (1/T) sum_{t<T} l_t`` through one ``lax.scan`` of a whole episode.
Truncated BPTT: the gradient of the mean loss of one window of ``K`` steps, the
state entering the window held fixed (``d s_0 / d theta := 0``); biased, and
exact when ``K = T`` and windows are aligned to episodes.
Checkpointed BPTT: full BPTT's gradient with at most ``m`` stored states, on the
schedule of ``unroll.checkpointing`` (Gruslys et al. 2016).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll.system import (
    check_against_theta,
    check_memory_budget,
    check_num_workers,
    check_system,
    check_truncation,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll.window import (
    Estimator,
    Worker,
    episode_start,
    plain_rule,
    run_windows,
    start_workers,
    window_info,
    worker_shape_check,
)


class BPTTState(NamedTuple):
    workers: Worker  # [num_workers, 1]


def _bptt(system, truncation: int, num_workers: int, stagger: bool) -> Estimator:
    rule = plain_rule(system)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, _ = start_workers(system, rule, theta, key, num_workers, 1, None, stagger)
        return BPTTState(workers)

    def estimate(theta, state, key):
        del key  # episodes draw their keys from each worker's own key chain
        worker_shape_check(state.workers, num_workers, 1)

        def window_loss(theta):
            workers, _, _, losses = run_windows(system, rule, theta, state.workers, (), None, truncation)
            return jnp.mean(losses), (workers, losses)

        (_, (workers, losses)), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
        return grad, BPTTState(workers), window_info(losses, num_workers * truncation)

    return Estimator(init, estimate)


def truncated_bptt(system, *, truncation: int, num_workers: int = 1) -> Estimator:
    """Truncated BPTT: ``g = grad_theta (1/K) sum_{k<K} l_{t+k}`` with the window's
    incoming state held fixed, averaged over ``num_workers`` staggered workers.

    A window that crosses an episode end goes on into the next episode (the new
    episode's ``init`` is differentiated too). Biased for ``K < T``.
    """
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_num_workers(num_workers)
    return _bptt(system, truncation, num_workers, stagger=True)


def full_bptt(system, *, num_workers: int = 1) -> Estimator:
    """Full BPTT: the exact gradient ``grad (1/T) sum_t l_t`` of ``num_workers``
    whole episodes (fresh keys each call), averaged. Memory ``O(T n)``."""
    check_system(system)
    num_workers = check_num_workers(num_workers)
    return _bptt(system, system.horizon, num_workers, stagger=False)


# --------------------------------------------------------------------------- checkpointed


class _Program(NamedTuple):
    """A schedule (``checkpointing.Plan.actions()``) regrouped for execution.

    Every *op* runs a forward chain from slot ``src`` (the state at step ``time``), writing
    each new state into the slot ``chain_slot`` gives (the scratch slot ``slots`` when the
    schedule does not keep it), then backpropagates the steps listed in its backward table
    entries (each from the state in slot ``back_slot``, at step ``back_time``). The
    executor runs both lists in blocks of ``block`` steps, unrolled.
    """

    block: int
    slots: int  # kept slots; the buffer has one more, the scratch slot
    ops: tuple  # (src, time, chain_begin, chain_length, back_begin, back_length): int arrays [num_ops]
    chain_slot: np.ndarray
    back_slot: np.ndarray
    back_time: np.ndarray


def _program(schedule, block: int = 4) -> _Program:
    """Regroups ``schedule.actions()`` into ops: a run of store actions continuing one
    another is one chain; the backward actions after it are its backward list; a backward
    action that first recomputes ``count > 0`` steps becomes a chain into the scratch slot
    plus a backward pass from it. Same steps, same order, same results."""
    actions, slots = schedule.actions(), schedule.slots_used
    scratch = slots
    ops = []  # [src, time, chain (slots), backward [(slot, time)]]
    op, chain_end = None, None  # chain_end: (slot, time) of the state the chain reached
    for src, time, count, store, dst in zip(*actions):
        if store:
            if op is None or op[3] or chain_end != (src, time):
                op = [int(src), int(time), [], []]
                ops.append(op)
            op[2] += [scratch] * (int(count) - 1) + [int(dst)]
            chain_end = (dst, time + count)
        elif count == 0:
            if op is None:
                op = [int(src), int(time), [], []]
                ops.append(op)
            op[3].append((int(src), int(time)))
        else:  # recompute `count` steps into the scratch slot, then backpropagate from it
            op = [int(src), int(time), [scratch] * int(count), [(scratch, int(time + count))]]
            ops.append(op)
            chain_end = None
    chain_slot, back, table = [], [], []
    for src, time, chain, backward in ops:
        table.append((src, time, len(chain_slot), len(chain), len(back), len(backward)))
        chain_slot += chain
        back += backward
    as_int = lambda v: np.asarray(v, np.int32)
    # horizon 1 has no forward chain; one never-read entry keeps the (traced) index valid
    chain_slot = chain_slot or [0]
    return _Program(
        block,
        slots,
        tuple(as_int(c) for c in zip(*table)),
        as_int(chain_slot),
        as_int([s for s, _ in back]),
        as_int([t for _, t in back]),
    )


def _blocked_loop(length, block: int, body, carry):
    """``body(j, carry)`` for ``j = 0 .. length - 1`` (``length`` traced): a ``fori_loop``
    over whole blocks of ``block`` calls, unrolled, then one over the remainder."""
    whole = length // block

    def blocked(i, carry):
        for u in range(block):
            carry = body(i * block + u, carry)
        return carry

    carry = jax.lax.fori_loop(0, whole, blocked, carry)
    return jax.lax.fori_loop(whole * block, length, body, carry)


def _checkpointed_episode(system, program: _Program, theta, state0):
    """Backpropagates one episode from ``state0`` by executing ``program`` (``_program``)
    with a buffer of ``program.slots + 1`` hidden states: one ``lax.scan`` over its ops,
    each a blocked loop over its chain's forward steps then one over its backward passes.

    Returns ``(theta_grad, state0_cotangent, losses [T], final_state, forward_steps)``:
    the gradient of ``(1/T) sum_t l_t`` through the steps (``state0`` held as an input),
    the cotangent of the float leaves of ``state0``, the per-step losses, the state after
    the last step, and the number of step evaluations done (``C(T, m)``).
    """
    horizon, block = system.horizon, program.block
    step_out = jax.eval_shape(system.step, theta, state0, jnp.int32(0))
    ct_loss = jnp.asarray(1.0 / horizon, step_out[1].dtype)
    chain_slot, back_slot, back_time = (jnp.asarray(a) for a in program[3:])
    load = lambda stack, i: jax.tree_util.tree_map(lambda s: jax.lax.dynamic_index_in_dim(s, i, keepdims=False), stack)

    def backward(x, k, ct_next):
        def f(theta, floats):  # only inexact leaves carry cotangents (not keys or counters)
            x_next, loss = system.step(theta, with_inexact_leaves(x, floats), k)
            return (inexact_leaves(x_next), loss), x_next

        (_, loss), vjp_fn, x_next = jax.vjp(f, theta, inexact_leaves(x), has_aux=True)
        d_theta, d_floats = vjp_fn((ct_next, ct_loss))
        return d_theta, d_floats, loss, x_next

    def body(carry, op):
        stack, ct, grad, losses, final, num_forward = carry
        src, time, chain_begin, chain_length, back_begin, back_length = op

        def forward_one(j, c):
            x, stack = c
            x = system.step(theta, x, time + j)[0]
            slot = chain_slot[chain_begin + j]
            return x, jax.tree_util.tree_map(lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, slot, 0), stack, x)

        _, stack = _blocked_loop(chain_length, block, forward_one, (load(stack, src), stack))

        def backward_one(j, c):
            ct, grad, losses, final = c
            k = back_time[back_begin + j]
            d_theta, ct, loss, x_next = backward(load(stack, back_slot[back_begin + j]), k, ct)
            grad = jax.tree_util.tree_map(jnp.add, grad, d_theta)
            final = jax.tree_util.tree_map(lambda a, b: jnp.where(k == horizon - 1, a, b), x_next, final)
            return ct, grad, losses.at[k].set(loss), final

        ct, grad, losses, final = _blocked_loop(back_length, block, backward_one, (ct, grad, losses, final))
        return (stack, ct, grad, losses, final, num_forward + chain_length + back_length), None

    stack = jax.tree_util.tree_map(lambda x: jnp.repeat(x[None], program.slots + 1, axis=0), state0)  # slot 0: state0
    ct = [jnp.zeros_like(x) for x in inexact_leaves(state0)]
    grad = jax.tree_util.tree_map(jnp.zeros_like, theta)
    losses = jnp.zeros((horizon,), step_out[1].dtype)
    carry = (stack, ct, grad, losses, state0, jnp.zeros((), jnp.int32))
    ops = tuple(jnp.asarray(a) for a in program.ops)
    (_, ct, grad, losses, final, num_forward), _ = jax.lax.scan(body, carry, ops)
    return grad, ct, losses, final, num_forward


def checkpointed_bptt(system, *, num_workers: int = 1, memory_budget: int) -> Estimator:
    """Full BPTT storing at most ``memory_budget`` hidden states (Gruslys et al. 2016,
    BPTT-HSM): the exact gradient ``grad (1/T) sum_t l_t`` of one whole episode, the same
    estimate (and worker state, and ``info``) as ``full_bptt(system)``, in
    ``C(T, memory_budget)`` step evaluations (``unroll.checkpointing.plan``) instead of
    ``O(T)`` stored states.

    ``memory_budget`` counts the hidden states kept at once, the episode's initial state
    included (1 is the minimum: every step is then recomputed from the start, ``T (T + 1)
    / 2`` evaluations). Besides those slots the computation holds a scratch slot, one
    working state, the state cotangent, one block of steps' activations and the ``T``
    scalar losses.

    The schedule is planned at construction and executed inside one compiled ``lax.scan``
    over its ops (a chain of forward steps from a slot, storing the states the schedule
    keeps, then the backward passes that follow it), each step differentiated by
    ``jax.vjp``; the inner loops run blocks of 4 steps, unrolled, so loop overhead is paid
    once per block. The program size does not grow with ``T``.
    ``info['steps']`` is ``T`` (the episode's steps, as for ``full_bptt``), not the
    recomputations.
    """
    from unroll.checkpointing import plan

    check_system(system)
    memory_budget = check_memory_budget(memory_budget)
    program = _program(plan(system.horizon, memory_budget))
    rule = plain_rule(system)
    horizon = system.horizon

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, _ = start_workers(system, rule, theta, key, 1, 1, None, stagger=False)
        return BPTTState(workers)

    def estimate(theta, state, key):
        del key  # episodes draw their keys from each worker's own key chain
        worker_shape_check(state.workers, 1, 1)
        # a full-episode estimator's worker always sits between episodes (t == horizon)
        worker = jax.tree_util.tree_map(lambda x: x[0, 0], state.workers)

        def start(theta):  # the worker's next episode, as full_bptt's first step starts it
            next_key, state0, _ = episode_start(rule, theta, worker, None)
            return inexact_leaves(state0), (state0, next_key)

        _, init_vjp, (state0, next_key) = jax.vjp(start, theta, has_aux=True)
        grad, ct0, losses, final, _ = _checkpointed_episode(system, program, theta, state0)
        (d_init,) = init_vjp(ct0)
        grad = jax.tree_util.tree_map(jnp.add, grad, d_init)
        workers = Worker(final, jnp.asarray(horizon, jnp.int32), next_key)
        workers = jax.tree_util.tree_map(lambda x: x[None, None], workers)
        return grad, BPTTState(workers), window_info(losses[None, None], horizon)

    return Estimator(init, estimate)
