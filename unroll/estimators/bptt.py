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

from unroll.system import (
    check_against_theta, check_positive_int, check_system, check_truncation, inexact_leaves, with_inexact_leaves,
)
from unroll.window import (
    Estimator, Worker, episode_start, plain_rule, run_windows, start_workers, window_info, worker_shape_check,
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


def truncated_bptt(system, truncation: int, num_workers: int = 1) -> Estimator:
    """Truncated BPTT: ``g = grad_theta (1/K) sum_{k<K} l_{t+k}`` with the window's
    incoming state held fixed, averaged over ``num_workers`` staggered workers.

    A window that crosses an episode end goes on into the next episode (the new
    episode's ``init`` is differentiated too). Biased for ``K < T``.
    """
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _bptt(system, truncation, num_workers, stagger=True)


def full_bptt(system, num_workers: int = 1) -> Estimator:
    """Full BPTT: the exact gradient ``grad (1/T) sum_t l_t`` of ``num_workers``
    whole episodes (fresh keys each call), averaged. Memory ``O(T n)``."""
    check_system(system)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _bptt(system, system.horizon, num_workers, stagger=False)


# --------------------------------------------------------------------------- checkpointed


def _checkpointed_episode(system, schedule, theta, state0):
    """Backpropagates one episode from ``state0`` by executing ``schedule = (actions,
    slots)`` (``checkpointing.Plan.actions()`` as a tuple of arrays, and
    ``Plan.slots_used``) with a buffer of ``slots`` hidden states.

    Returns ``(theta_grad, state0_cotangent, losses [T], final_state, forward_steps)``:
    the gradient of ``(1/T) sum_t l_t`` through the steps (``state0`` held as an input),
    the cotangent of the float leaves of ``state0``, the per-step losses, the state after
    the last step, and the number of step evaluations done (``C(T, m)``).
    """
    horizon = system.horizon
    actions, slots = schedule
    step_out = jax.eval_shape(system.step, theta, state0, jnp.int32(0))
    ct_loss = jnp.asarray(1.0 / horizon, step_out[1].dtype)

    def advance(x, start, count):
        return jax.lax.fori_loop(0, count, lambda i, x: system.step(theta, x, start + i)[0], x)

    def backward(x, k, ct_next):
        def f(theta, floats):  # only inexact leaves carry cotangents (not keys or counters)
            x_next, loss = system.step(theta, with_inexact_leaves(x, floats), k)
            return (inexact_leaves(x_next), loss), x_next

        (_, loss), vjp_fn, x_next = jax.vjp(f, theta, inexact_leaves(x), has_aux=True)
        d_theta, d_floats = vjp_fn((ct_next, ct_loss))
        return d_theta, d_floats, loss, x_next

    def body(carry, action):
        stack, ct, grad, losses, final, num_forward = carry
        src, time, count, store, dst = action
        x = jax.tree_util.tree_map(lambda s: jax.lax.dynamic_index_in_dim(s, src, keepdims=False), stack)
        x = advance(x, time, count)
        k = time + count

        def do_store(carry):
            stack, ct, grad, losses, final = carry
            stack = jax.tree_util.tree_map(
                lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, dst, axis=0), stack, x
            )
            return stack, ct, grad, losses, final

        def do_backward(carry):
            stack, ct, grad, losses, final = carry
            d_theta, ct, loss, x_next = backward(x, k, ct)
            grad = jax.tree_util.tree_map(jnp.add, grad, d_theta)
            losses = losses.at[k].set(loss)
            final = jax.tree_util.tree_map(lambda a, b: jnp.where(k == horizon - 1, a, b), x_next, final)
            return stack, ct, grad, losses, final

        carry = jax.lax.cond(store, do_store, do_backward, (stack, ct, grad, losses, final))
        return (*carry, num_forward + count + jnp.where(store, 0, 1)), None

    stack = jax.tree_util.tree_map(lambda x: jnp.repeat(x[None], slots, axis=0), state0)  # slot 0: state0
    ct = [jnp.zeros_like(x) for x in inexact_leaves(state0)]
    grad = jax.tree_util.tree_map(jnp.zeros_like, theta)
    losses = jnp.zeros((horizon,), step_out[1].dtype)
    carry = (stack, ct, grad, losses, state0, jnp.zeros((), jnp.int32))
    xs = tuple(jnp.asarray(a) for a in actions)
    (_, ct, grad, losses, final, num_forward), _ = jax.lax.scan(body, carry, xs)
    return grad, ct, losses, final, num_forward


def checkpointed_bptt(system, memory_budget: int) -> Estimator:
    """Full BPTT storing at most ``memory_budget`` hidden states (Gruslys et al. 2016,
    BPTT-HSM): the exact gradient ``grad (1/T) sum_t l_t`` of one whole episode, the same
    estimate (and worker state, and ``info``) as ``full_bptt(system)``, in
    ``C(T, memory_budget)`` step evaluations (``unroll.checkpointing.plan``) instead of
    ``O(T)`` stored states.

    ``memory_budget`` counts the hidden states kept at once, the episode's initial state
    included (1 is the minimum: every step is then recomputed from the start, ``T (T + 1)
    / 2`` evaluations). Besides those slots the computation holds one working state, the
    state cotangent, one step's activations and the ``T`` scalar losses.

    The schedule is planned at construction and executed inside one compiled ``lax.scan``
    over its actions ("run ``n`` steps from slot ``i``, then store into slot ``j`` /
    backpropagate the step reached"), the ``m`` slots a fixed ``[m, ...]`` buffer, each
    step differentiated by ``jax.vjp``: the program size does not grow with ``T``.
    ``info['steps']`` is ``T`` (the episode's steps, as for ``full_bptt``), not the
    recomputations.
    """
    from unroll.checkpointing import check_memory_budget, plan

    check_system(system)
    memory_budget = check_memory_budget(memory_budget)
    schedule = plan(system.horizon, memory_budget)
    program = (tuple(schedule.actions()), schedule.slots_used)
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
