"""Memory-budgeted backpropagation schedules: the BPTT-HSM dynamic program of
Gruslys et al. (2016), "Memory-Efficient Backpropagation Through Time".

The cost model. Backpropagating ``t`` steps means running the step function forward
("forward steps") and backward. A *slot* holds one hidden state; with ``m`` slots the
state at the start of the segment occupies one of them. Backpropagating one step needs
that step evaluated forward once more (its internal activations are never stored, only
hidden states are), so every step is counted once at its backward pass, plus once for
every time it is re-run to reach a later state. Then

* ``C(1, m) = 1``: the one step, evaluated for its backward pass;
* ``C(t, 1) = t (t + 1) / 2``: only the start state is kept, so step ``k`` (``0 <= k < t``,
  backpropagated last to first) costs ``k + 1`` forward steps from the start;
* ``C(t, m) = min_{1 <= y < t} [ y + C(t - y, m - 1) + C(y, m) ]``: run ``y`` steps, store
  the state ``s_y`` in a second slot, solve the right part ``[y, t)`` with the ``m - 1``
  slots left (``s_y`` being one of them), free the slot, then solve the left part
  ``[0, y)`` with all ``m`` slots.

No other base cases are needed (``y`` ranges over ``1..t-1``, so ``C(0, .)`` never
occurs). With ``m >= t`` the cost is ``2 t - 1``, not ``t``: the first sweep stores every
state (``t - 1`` steps) and each step is evaluated once more for its backward pass. It is
the least possible cost for every ``m`` (each step but the last runs at least twice), so
``C(t, m) = C(t, min(m, t))`` and a budget above the horizon changes nothing. This
definition gives the published values ``C(10, 2) = 30`` and ``C(100, 10) = 322``.

``plan(horizon, memory_budget)`` solves the program (numpy, one vectorized minimum per
``t`` over all splits and budgets, ``O(T^2 m)`` element operations); ``Plan.split_tree()``
is the recursive schedule and ``Plan.actions()`` the same schedule flattened into the
stack-machine program; ``program`` regroups it into ops and ``checkpointed_episode``
executes them in JAX (one ``lax.scan``), which ``unroll.checkpointed_bptt`` calls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll.system import check_memory_budget, check_positive_int, inexact_leaves, with_inexact_leaves

__all__ = ["Action", "Plan", "Program", "Segment", "checkpointed_episode", "plan", "program"]


class Segment(NamedTuple):
    """One node of the split tree: backpropagate ``length`` steps starting at episode step
    ``start`` with ``slots`` state slots.

    ``split == 0`` marks a leaf: a single step (``length == 1``) or a one-slot segment
    (``slots == 1``, every step recomputed from the segment's start). Otherwise ``left``
    is ``[start, start + split)`` with ``slots`` slots (solved second) and ``right`` is
    ``[start + split, start + length)`` with ``slots - 1`` slots (solved first).
    """

    start: int
    length: int
    slots: int
    split: int
    left: Segment | None
    right: Segment | None


class Action(NamedTuple):
    """The flattened schedule, one entry per action (int arrays of equal length).

    Every action loads the state in slot ``src`` (the state at episode step ``time``) and
    runs ``count`` forward steps from it. Then, if ``store``, it writes the result into slot
    ``dst``; otherwise it backpropagates step ``time + count`` from the result (one more
    forward step, evaluated with its backward pass). Backward actions come in the order
    ``T - 1, T - 2, ..., 0``; slot 0 holds the episode's initial state.
    """

    src: np.ndarray
    time: np.ndarray
    count: np.ndarray
    store: np.ndarray  # bool
    dst: np.ndarray  # -1 for backward actions


class Plan(NamedTuple):
    """The BPTT-HSM schedule for ``horizon`` steps and ``memory_budget`` state slots.

    * ``forward_steps``: ``C(horizon, memory_budget)``, the least number of forward step
      evaluations (each step's evaluation for its own backward pass included);
    * ``split``: the top-level argmin ``y`` (0 if ``horizon == 1`` or ``memory_budget == 1``);
    * ``slots_used``: the slots the schedule actually fills (``<= memory_budget``);
    * ``costs[t, m]`` / ``splits[t, m]``: ``C(t, m)`` and its argmin (the smallest ``y``
      on ties; 0 for leaves) for ``1 <= t <= horizon``, ``1 <= m <= min(memory_budget,
      horizon)``; row and column 0 are unused. Larger budgets equal the last column.
    """

    horizon: int
    memory_budget: int
    forward_steps: int
    split: int
    slots_used: int
    costs: np.ndarray
    splits: np.ndarray

    def cost(self, length: int, slots: int) -> int:
        """``C(length, slots)`` for ``1 <= length <= horizon``, ``slots >= 1``."""
        return int(self.costs[length, min(slots, self.costs.shape[1] - 1)])

    def split_of(self, length: int, slots: int) -> int:
        """The argmin ``y`` of ``C(length, slots)`` (0 for a leaf)."""
        return int(self.splits[length, min(slots, self.splits.shape[1] - 1)])

    def split_tree(self, start: int = 0, length: int | None = None, slots: int | None = None) -> Segment:
        """The recursive schedule as a tree of ``Segment`` (the whole episode by default)."""
        length = self.horizon if length is None else length
        slots = self.memory_budget if slots is None else slots
        y = self.split_of(length, slots)
        if y == 0:
            return Segment(start, length, slots, 0, None, None)
        return Segment(
            start,
            length,
            slots,
            y,
            self.split_tree(start, y, slots),
            self.split_tree(start + y, length - y, slots - 1),
        )

    def actions(self) -> Action:
        """The schedule as the stack-machine program of ``Action`` (see its docstring)."""
        src, time, count, store, dst = [], [], [], [], []
        # (start, length, slots, slot holding the state at `start`), solved last-in first-out
        todo = [(0, self.horizon, self.memory_budget, 0)]
        while todo:
            start, length, slots, slot = todo.pop()
            y = self.split_of(length, slots)
            if y == 0:  # one step, or one slot: recompute every step from the start
                for k in range(length - 1, -1, -1):
                    src.append(slot), time.append(start), count.append(k), store.append(False), dst.append(-1)
                continue
            src.append(slot), time.append(start), count.append(y), store.append(True), dst.append(slot + 1)
            todo.append((start, y, slots, slot))  # left part, after the right part
            todo.append((start + y, length - y, slots - 1, slot + 1))
        as_int = lambda v: np.asarray(v, np.int32)
        return Action(as_int(src), as_int(time), as_int(count), np.asarray(store, bool), as_int(dst))


def _solve(horizon: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """``costs[t, m]`` and ``splits[t, m]`` for ``t <= horizon``, ``m <= budget``."""
    # work in [m, t] layout (the minimum runs over contiguous memory), int32 while it fits
    dtype = np.int32 if horizon * (horizon + 1) // 2 + horizon < 2**31 - 1 else np.int64
    costs = np.zeros((budget + 1, horizon + 1), dtype)
    splits = np.zeros((budget + 1, horizon + 1), dtype)
    t = np.arange(horizon + 1, dtype=np.int64)
    costs[1, :] = t * (t + 1) // 2
    costs[1:, 1] = 1
    ys = np.arange(horizon + 1, dtype=dtype)
    for length in range(2, horizon + 1) if budget >= 2 else ():
        # y + C(length - y, m - 1) + C(y, m) for every split 1 <= y < length and budget
        # m >= 2 at once (columns: y; the first operand is C(length - y, .) read backwards)
        total = costs[1:budget, length - 1 : 0 : -1] + costs[2:, 1:length]
        total += ys[1:length]
        best = np.argmin(total, axis=1)  # the first (smallest) y on ties
        costs[2:, length] = np.take_along_axis(total, best[:, None], axis=1)[:, 0]
        splits[2:, length] = best + 1
    return np.ascontiguousarray(costs.T, np.int64), np.ascontiguousarray(splits.T, np.int64)


def plan(horizon: int, memory_budget: int) -> Plan:
    """The BPTT-HSM schedule backpropagating ``horizon`` steps with ``memory_budget``
    hidden-state slots (the initial state included) in the fewest forward steps.

    >>> plan(10, 2).forward_steps, plan(100, 10).forward_steps
    (30, 322)
    """
    horizon = check_positive_int(horizon, "horizon", "It is the number of steps to backpropagate, e.g. horizon=100.")
    memory_budget = check_memory_budget(memory_budget)
    costs, splits = _solve(horizon, min(memory_budget, horizon))
    p = Plan(horizon, memory_budget, 0, 0, 0, costs, splits)
    actions = p.actions()
    slots_used = int(max(actions.dst.max(initial=-1), actions.src.max(initial=0))) + 1
    return p._replace(
        forward_steps=p.cost(horizon, memory_budget), split=p.split_of(horizon, memory_budget), slots_used=slots_used
    )


# --------------------------------------------------------------------------- executing a plan


class Program(NamedTuple):
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


def program(schedule, block: int = 4) -> Program:
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
    return Program(
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


def checkpointed_episode(system, program: Program, theta, state0):
    """Backpropagates one episode from ``state0`` by executing ``program`` (``program``)
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
