"""Memory-budgeted backpropagation schedules: binomial checkpointing (Griewank & Walther
2000, "revolve"), which is also the optimum of the BPTT-HSM dynamic program of Gruslys
et al. (2016), "Memory-Efficient Backpropagation Through Time", in closed form.

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

The closed form. Let ``beta(m, r) = binom(m + r, m)`` (the longest horizon ``m`` slots
reverse with every step run at most ``r + 1`` times) and ``rho_m(t)`` the unique ``r >= 0``
with ``beta(m, r - 1) < t <= beta(m, r)``. Then

    C(t, m) = (rho_m(t) + 1) t - beta(m + 1, rho_m(t) - 1),

Griewank's ``r t - beta(m + 1, r - 1)`` extra advances plus the ``t`` evaluations for the
backward passes (``C(10, 2) = 30``, ``C(100, 10) = 322``; ``2 t - 1`` once ``m >= t - 1``).
``C(., m)`` is convex and piecewise linear, slope ``rho_m(t) + 1`` on ``(beta(m, r - 1),
beta(m, r)]``, so the split cost is convex in ``y`` and its *smallest* minimizer is the
first ``y`` whose forward difference is ``>= 0``: ``1 + rho_m(y + 1) >= rho_{m-1}(t - y)``.
Within the band ``rho_m(y + 1) = q`` (``beta(m, q - 1) <= y < beta(m, q)``) this reads
``y >= t - beta(m - 1, q + 1)``; the first band where it holds is ``q = max(1, rho_m(t + 1)
- 1)`` (Pascal: ``beta(m, q) + beta(m - 1, q + 1) = beta(m, q + 1)``), so

    y*(t, m) = min(t - 1, max(beta(m, q - 1), t - beta(m - 1, q + 1))).

A schedule costs ``O(log t)`` binomials per distinct ``(length, slots)`` in its split tree
(a few hundred at ``t = 10^6``), and ``O(actions)`` numpy work to flatten. The dynamic
program it replaces (``O(t^2 m)``) is kept in the tests, as the reference it is checked
against.

``plan(horizon, memory_budget)`` is the schedule; ``Plan.split_tree()`` its recursive form
and ``Plan.actions()`` the same schedule flattened into the stack-machine program;
``program`` regroups it into ops and ``checkpointed_episode`` executes them in JAX (one
``lax.scan``; the steps between stores as plain fused loops), which
``unroll.checkpointed_bptt`` calls. The executor runs exactly ``C(T, m)`` step evaluations.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import (
    MemoryBytes,
    check_memory_budget,
    check_positive_int,
    inexact_leaves,
    with_inexact_leaves,
)

__all__ = [
    "Action",
    "budget_slots",
    "checkpointed_episode",
    "checkpointed_episodes",
    "format_bytes",
    "forward_steps",
    "Plan",
    "plan",
    "Program",
    "program",
    "repetitions",
    "Segment",
    "spine",
    "split",
    "state_bytes",
]


def _beta(m: int, r: int) -> int:
    """``binom(m + r, m)``, 0 for ``r < 0``."""
    return math.comb(m + r, m) if r >= 0 else 0


@functools.lru_cache(maxsize=1 << 16)
def repetitions(length: int, slots: int) -> int:
    r"""$\rho_m(t)$: the most times any step runs beyond its first in an optimal schedule.

    It is the unique $r \ge 0$ with $\binom{m + r - 1}{m} < t \le \binom{m + r}{m}$.
    Galloping then bisection: $O(\log t)$ binomials.

    Args:
      length: $t$, the steps to backpropagate.
      slots: $m$, the state slots.

    Returns:
      $\rho_m(t)$, an int.
    """
    hi = 1
    while _beta(slots, hi) < length:
        hi *= 2
    lo = hi // 2 if hi > 1 else 0
    while lo < hi:  # the smallest r in [lo, hi] with beta(m, r) >= t
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _beta(slots, mid) >= length else (mid + 1, hi)
    return lo


def forward_steps(length: int, slots: int) -> int:
    r"""$C(t, m)$: the least number of step evaluations that backpropagate $t$ steps with $m$ slots.

    In closed form, with $r = \rho_m(t)$ (`repetitions`),

    $$
    C(t, m) = (r + 1)\, t - \binom{m + r}{m + 1}.
    $$

    Args:
      length: $t$, the steps to backpropagate.
      slots: $m$, the state slots.

    Returns:
      $C(t, m)$, an int.
    """
    r = repetitions(length, slots)
    return (r + 1) * length - _beta(slots + 1, r - 1)


@functools.lru_cache(maxsize=1 << 16)
def split(length: int, slots: int) -> int:
    r"""The smallest optimal first advance $y^*(t, m)$; see the module docstring for the derivation.

    Args:
      length: $t$, the steps to backpropagate.
      slots: $m$, the state slots.

    Returns:
      $y^*(t, m)$, an int; 0 for a leaf ($t = 1$ or $m = 1$).
    """
    if length == 1 or slots == 1:
        return 0
    q = max(1, repetitions(length + 1, slots) - 1)
    return min(length - 1, max(_beta(slots, q - 1), length - _beta(slots - 1, q + 1)))


def _unit_split(length: int, slots: int) -> bool:
    """``y*(t, m) == 1`` (an internal node that stores the very next state): exactly when
    ``t <= 1 + m (m + 1) / 2`` (``q = 1`` and ``t - beta(m - 1, 2) <= 1`` above)."""
    return length >= 2 and slots >= 2 and 2 * (length - 1) <= slots * (slots + 1)


def spine(length: int, slots: int) -> int:
    r"""How many nodes in a row, down the right path from $(t, m)$, split off one step.

    That is the largest $K$ with $y^*(t - k, m - k) = 1$ for all $k < K$.
    $1 + (m - k)(m - k + 1) / 2 - (t - k)$ decreases in $k$, so bisection finds it; every such
    node is a store of the next state and a one-step leaf, so `actions()` emits the $K$ nodes
    at once (with $m \ge t$ the whole episode is one spine: store every state).

    Args:
      length: $t$, the steps to backpropagate.
      slots: $m$, the state slots.

    Returns:
      $K$, an int.
    """
    lo, hi = 0, min(length, slots) - 1  # the count of unit splits lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _unit_split(length - mid + 1, slots - mid + 1) else (lo, mid - 1)
    return lo


def _subtrees(length: int, slots: int) -> dict:
    """For every distinct ``(length, slots)`` in the split tree of ``(length, slots)``, a
    spine of unit splits counted as one node: ``(split, number of actions, deepest slot
    index, spine length K)`` (``K == 0`` unless ``split == 1``; the spine's child is
    ``(t - K, m - K)``), children before parents (an explicit stack)."""
    stats, todo = {}, [(length, slots)]
    while todo:
        key = todo[-1]
        if key in stats:
            todo.pop()
            continue
        t, m = key
        y = split(t, m)
        if y == 0:
            stats[todo.pop()] = (0, t, 0, 0)
            continue
        k = spine(t, m) if y == 1 else 0
        children = [(t - k, m - k)] if k else [(y, m), (t - y, m - 1)]
        missing = [c for c in children if c not in stats]
        if missing:
            todo += missing
            continue
        if k:  # k stores, the child's subtree, k one-step leaves
            _, size, depth, _ = stats[children[0]]
            stats[todo.pop()] = (1, 2 * k + size, k + depth, k)
        else:
            (_, left_size, left_depth, _), (_, right_size, right_depth, _) = stats[children[0]], stats[children[1]]
            stats[todo.pop()] = (y, 1 + left_size + right_size, max(left_depth, 1 + right_depth), 0)
    return stats


class Segment(NamedTuple):
    """One node of the split tree: backpropagate `length` steps starting at episode step `start` with `slots` slots.

    Attributes:
      start: the episode step the segment starts at.
      length: the steps it backpropagates.
      slots: the state slots it has.
      split: the first advance $y$; 0 marks a leaf: a single step (`length == 1`) or a one-slot segment
        (`slots == 1`, every step recomputed from the segment's start).
      left: `[start, start + split)` with `slots` slots (solved second); `None` for a leaf.
      right: `[start + split, start + length)` with `slots - 1` slots (solved first); `None` for a leaf.
    """

    start: int
    length: int
    slots: int
    split: int
    left: Segment | None
    right: Segment | None


class Action(NamedTuple):
    r"""The flattened schedule, one entry per action (int arrays of equal length).

    Every action loads the state in slot `src` (the state at episode step `time`) and
    runs `count` forward steps from it. Then, if `store`, it writes the result into slot
    `dst`; otherwise it backpropagates step `time + count` from the result (one more
    forward step, evaluated with its backward pass). Backward actions come in the order
    $T - 1, T - 2, \dots, 0$; slot 0 holds the episode's initial state.

    Attributes:
      src: the slot each action loads.
      time: the episode step of the state in `src`.
      count: the forward steps run from it.
      store: bool: whether the action stores its result (else it backpropagates a step).
      dst: the slot a store writes; -1 for backward actions.
    """

    src: np.ndarray
    time: np.ndarray
    count: np.ndarray
    store: np.ndarray  # bool
    dst: np.ndarray  # -1 for backward actions


class Plan(NamedTuple):
    """The optimal schedule for `horizon` steps and `memory_budget` state slots (`plan`).

    Attributes:
      horizon: the steps to backpropagate, $T$.
      memory_budget: the state slots, $m$ (the initial state's included).
      forward_steps: $C(T, m)$, the least number of forward step evaluations (each step's evaluation for its
        own backward pass included).
      split: the top-level smallest optimal split $y$ (0 if `horizon == 1` or `memory_budget == 1`).
      slots_used: the slots the schedule actually fills (`<= memory_budget`).
      num_actions: the length of `actions()`, `horizon` backward actions plus one store per split.
    """

    horizon: int
    memory_budget: int
    forward_steps: int
    split: int
    slots_used: int
    num_actions: int

    def cost(self, length: int, slots: int) -> int:
        """$C(t, m)$ (closed form; any $t, m \\ge 1$).

        Args:
          length: $t$.
          slots: $m$.

        Returns:
          `forward_steps(length, slots)`.
        """
        return forward_steps(length, slots)

    def split_of(self, length: int, slots: int) -> int:
        """The smallest optimal split $y$ of $C(t, m)$ (0 for a leaf).

        Args:
          length: $t$.
          slots: $m$ (more than $t$ counts as $t$).

        Returns:
          $y$, an int.
        """
        return split(length, min(slots, length))

    def split_tree(self, start: int = 0, length: int | None = None, slots: int | None = None) -> Segment:
        """The recursive schedule as a tree of `Segment` (the whole episode by default).

        Args:
          start: the episode step the tree's root starts at.
          length: the steps of the root. Default: `horizon`.
          slots: the slots of the root. Default: `memory_budget`.

        Returns:
          The root `Segment`.
        """
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
        """The schedule as the stack-machine program of `Action` (see its docstring).

        Depth-first order (a split's store, its right part, its left part), built level by
        level of the split tree with numpy: every node's place in the list is its parent's
        plus the sizes of the subtrees before it, known per distinct `(length, slots)`;
        a run of unit splits (`spine`) is one node.

        Returns:
          An `Action` of `num_actions` entries.
        """
        budget = min(self.memory_budget, self.horizon)
        stats, width = _subtrees(self.horizon, budget), budget + 1
        out = Action(*(np.empty(self.num_actions, d) for d in (np.int32, np.int32, np.int32, bool, np.int32)))

        def emit(at, src, time, count, store, dst):
            out.src[at], out.time[at], out.count[at], out.store[at], out.dst[at] = src, time, count, store, dst

        def expand(lengths):  # (owner, i) for i < lengths[owner], flattened
            owner = np.repeat(np.arange(lengths.size), lengths)
            return owner, np.arange(owner.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)

        one = lambda v: np.asarray([v], np.int64)
        start, length, slots, slot, offset = one(0), one(self.horizon), one(budget), one(0), one(0)
        while length.size:
            keys, inverse = np.unique(length * width + slots, return_inverse=True)
            table = []
            for key in keys.tolist():
                t, m = divmod(key, width)
                y, _, _, k = stats[(t, m)]
                table.append((y, k, stats[(t - k, m - k) if k else (t - y, m - 1)][1] if y else 0))
            y, k, right_size = np.asarray(table, np.int64).reshape(-1, 3)[inverse].T
            # leaves: `length` backward actions, recomputing length - 1, ..., 0 steps from `slot`
            leaf = y == 0
            owner, i = expand(length[leaf])
            emit(offset[leaf][owner] + i, slot[leaf][owner], start[leaf][owner], length[leaf][owner] - 1 - i, False, -1)
            # spines: k stores of the next state, the child's actions, then k one-step backward passes
            run = k > 0
            owner, i = expand(k[run])
            at, first, into = offset[run][owner], start[run][owner], slot[run][owner]
            emit(at + i, into + i, first + i, 1, True, into + i + 1)
            back = k[run][owner] - 1 - i
            emit(at + k[run][owner] + right_size[run][owner] + i, into + back, first + back, 0, False, -1)
            spines = (
                start[run] + k[run],
                length[run] - k[run],
                slots[run] - k[run],
                slot[run] + k[run],
                offset[run] + k[run],
            )
            # splits: one store of the state `y` steps on into the next slot, then the children
            node = ~leaf & ~run
            start, length, slots, slot, offset, y = (v[node] for v in (start, length, slots, slot, offset, y))
            emit(offset, slot, start, y, True, slot + 1)
            right = (start + y, length - y, slots - 1, slot + 1, offset + 1)
            left = (start, y, slots, slot, offset + 1 + right_size[node])
            start, length, slots, slot, offset = (np.concatenate(parts) for parts in zip(spines, right, left))
        return out


def plan(horizon: int, memory_budget: int) -> Plan:
    """The schedule backpropagating `horizon` steps with `memory_budget` slots in the fewest forward steps.

    The slots hold hidden states, the initial state included. Closed form: a few hundred
    binomials even at $T = 10^6$; `Plan.actions()` flattens it.

    >>> plan(10, 2).forward_steps, plan(100, 10).forward_steps
    (30, 322)

    Args:
      horizon: $T$, the steps to backpropagate (a positive int).
      memory_budget: $m$, a count of state slots (not bytes; `budget_slots` converts those).

    Returns:
      A `Plan`.
    """
    horizon = check_positive_int(horizon, "horizon", "It is the number of steps to backpropagate, e.g. horizon=100.")
    memory_budget = check_memory_budget(memory_budget, allow_bytes=False)
    budget = min(memory_budget, horizon)
    y, num_actions, depth, _ = _subtrees(horizon, budget)[(horizon, budget)]
    return Plan(horizon, memory_budget, forward_steps(horizon, budget), y, depth + 1, num_actions)


# --------------------------------------------------------------------------- budgets in bytes


def state_bytes(state) -> int:
    """The bytes of one state: what one slot of the executor's buffer holds.

    Args:
      state: a pytree of arrays or `jax.ShapeDtypeStruct` (PRNG key leaves are counted by their key data).

    Returns:
      The bytes, an int.
    """
    total = 0
    for leaf in jax.tree_util.tree_leaves(jax.eval_shape(lambda s: s, state)):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    return total


def format_bytes(num_bytes: float) -> str:
    """A number of bytes in binary units, to 4 significant digits: `4104` -> `"4.008 KiB"`.

    Args:
      num_bytes: the bytes.

    Returns:
      The text, in B, KiB, MiB, GiB or TiB.
    """
    power = min(int(math.log(max(num_bytes, 1), 1024)), 4)
    return f"{num_bytes / 1024**power:.4g} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[power]}"


def budget_slots(memory_budget: int | str | MemoryBytes, state) -> int:
    r"""The number of state slots `memory_budget` gives for states like `state` (one episode's state).

    Args:
      memory_budget: a count of slots, taken as it is; or bytes (`"64MiB"`), giving
        $\lfloor \text{bytes} / \text{state\_bytes}(\text{state}) \rfloor$ slots.
      state: one episode's state (arrays or `jax.ShapeDtypeStruct`s).

    Returns:
      The number of slots, an int.

    Raises:
      BadValue: a bytes budget that cannot hold one state (the message names the minimum).
    """
    budget = check_memory_budget(memory_budget)
    if not isinstance(budget, MemoryBytes):
        return budget
    one = state_bytes(state)
    if budget.size < one:
        raise BadValue(
            f"`memory_budget`={budget.text!r} ({budget.size:,} B) cannot hold one state: a state of this system "
            f"takes {one:,} B{f' ({format_bytes(one)})' if one >= 1024 else ''}, so the least bytes budget is memory_budget='{one}B'; pass at least "
            f"that (or a count of states, e.g. memory_budget=1)."
        )
    return budget.size // one


# --------------------------------------------------------------------------- executing a plan


class Program(NamedTuple):
    r"""A schedule (`checkpointing.Plan.actions()`) regrouped for execution (`program`).

    Every *op* runs a forward chain of ``chain_length`` steps from slot ``src`` (the state
    at step ``time``), then backpropagates the steps of its backward entries, each from
    the state in slot ``back_slot``; backward entry ``j`` (over all ops) is episode step
    ``T - 1 - j``. The chain's stores come in *runs*: run ``i`` of the op (``run_begin <=
    i < run_begin + run_count``) starts ``run_start[i]`` chain steps in, runs ``run_gap[i]``
    steps that store nothing (one fused loop), then ``run_stores[i]`` steps that each store
    their state, into slots ``run_slot[i]``, ``run_slot[i] + 1``, ... (a chain's stores fill
    consecutive slots; a spine of unit splits is one run). An op without stores ends its
    chain in the scratch slot ``slots``, which its first backward entry reads. The executor
    runs the backward passes in blocks of ``block`` steps, unrolled (the forward loops are
    not unrolled: on XLA:CPU that measured slower).

    Sizes, all ``O(actions)``: ``ops`` one row of 7 ``int32`` per op (at most one per
    action), ``runs`` 4 ``int32`` per run (at most one per store), ``back_slot`` one per
    step (``uint8`` while the slots fit). At $T = 10^6$, $m = 100$: about 105k ops and
    1M backward entries.

    Attributes:
      block: the backward passes the executor unrolls per block.
      slots: the kept slots; the buffer has one more, the scratch slot.
      ops: `(src, time, chain_length, run_begin, run_count, back_begin, back_length)`: int32 arrays
        `[num_ops]`.
      runs: `(run_start, run_gap, run_stores, run_slot)`: int32 arrays `[num_runs]`.
      back_slot: `[T]`: the slot each backward entry backpropagates from (the smallest int dtype that fits).
    """

    block: int
    slots: int  # kept slots; the buffer has one more, the scratch slot
    # (src, time, chain_length, run_begin, run_count, back_begin, back_length): int32 arrays [num_ops]
    ops: tuple
    runs: tuple  # (run_start, run_gap, run_stores, run_slot): int32 arrays [num_runs]
    back_slot: np.ndarray


def _slot_dtype(num_slots: int):
    return np.uint8 if num_slots <= 255 else np.int16 if num_slots <= 32767 else np.int32


def _runs(store_end: np.ndarray, store_op: np.ndarray, store_slot: np.ndarray, num_ops: int):
    """The stores of every op grouped into runs of stores one step apart (see `Program`):
    `(run_begin, run_count)` per op and `(run_start, run_gap, run_stores, run_slot)` per run."""
    first = np.ones(store_end.size, bool)
    first[1:] = store_op[1:] != store_op[:-1]  # an op's first store
    before = np.where(first, 0, np.concatenate([[0], store_end])[:-1])  # chain steps done before each store
    new = first | (store_end - before > 1)  # a store after steps that store nothing starts a run
    begins = np.flatnonzero(new)
    runs = (before[new], store_end[new] - before[new] - 1, np.diff(np.append(begins, store_end.size)), store_slot[new])
    run_count = np.bincount(store_op[new], minlength=num_ops)
    return (np.cumsum(run_count) - run_count, run_count), runs


def program(schedule, block: int = 4) -> Program:
    """Regroups `schedule.actions()` into ops for the executor (`checkpointed_episodes`).

    A run of store actions continuing one another is one chain; the backward actions after it that
    recompute nothing are its backward list; a backward action that first recomputes `count > 0`
    steps starts an op of its own, a chain into the scratch slot plus a backward pass from it. A
    chain's stores are grouped into runs of stores one step apart, and a backward action that first
    recomputes from the state the chain just stored continues the chain. Same steps, same order,
    same results (numpy over the actions, no Python loop).

    Args:
      schedule: a `Plan` (anything with `actions()` and `slots_used`).
      block: the backward passes the executor unrolls per block.

    Returns:
      A `Program`.
    """
    a, slots = schedule.actions(), schedule.slots_used
    count, n = a.count.astype(np.int64), a.src.size
    # an action continues the chain when the action before it stored exactly the state it loads: a store,
    # or a backward action's recomputation (the chain's tail, into the scratch slot)
    continues = np.zeros(n, bool)
    continues[1:] = a.store[:-1] & (a.dst[:-1] == a.src[1:]) & (a.time[:-1] + a.count[:-1] == a.time[1:])
    continues[1:] &= a.store[1:] | (count[1:] > 0)
    begins = np.where(a.store | (count > 0), ~continues, False)
    begins[0] = True
    first = np.flatnonzero(begins)
    op = np.cumsum(begins) - 1  # the op of every action
    before = lambda total: np.concatenate([[0], total])[first]  # totals over the ops before each op
    backward = (~a.store).astype(np.int64)
    steps_done = np.cumsum(count)
    store_end = (steps_done - before(steps_done)[op])[a.store]  # chain steps done when each store lands
    (run_begin, run_count), runs = _runs(store_end, op[a.store], a.dst[a.store].astype(np.int64), first.size)
    ops = (
        a.src[first],
        a.time[first],
        np.add.reduceat(count, first),
        run_begin,
        run_count,
        before(np.cumsum(backward)),
        np.add.reduceat(backward, first),
    )
    back_slot = np.where(a.count == 0, a.src, slots)[~a.store].astype(_slot_dtype(slots + 1))
    # a never-read entry keeps the (traced) index valid when there is no store (m = 1, T = 1)
    runs = tuple(np.asarray(r if r.size else [0], np.int32) for r in runs)
    return Program(block, slots, tuple(np.asarray(c, np.int32) for c in ops), runs, back_slot)


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


def _update(stack, x, slot):
    """``stack`` with ``x`` written into ``slot`` (every leaf)."""
    return jax.tree_util.tree_map(lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, slot, 0), stack, x)


def _load(stack, slot):
    """The state in ``slot`` of ``stack``."""
    return jax.tree_util.tree_map(lambda s: jax.lax.dynamic_index_in_dim(s, slot, keepdims=False), stack)


def _forward_chain(advance, step, runs, stack, op, scratch: int):
    """An op's forward chain: its runs (plain steps in one fused loop, then steps that each
    store their state), then, for an op without stores, the recomputation into ``scratch``.
    ``advance(x, time, count)`` runs plain steps; ``step(x, time)`` one step."""
    src, time, chain_length, run_begin, run_count = op[:5]

    def run_one(i, carry):
        x, _, stack = carry
        start, gap, stores, slot = (r[run_begin + i] for r in runs)
        x = advance(x, time + start, gap)

        def store_one(j, carry):
            x, stack = carry
            x = step(x, time + start + gap + j)
            return x, _update(stack, x, slot + j)

        x, stack = jax.lax.fori_loop(0, stores, store_one, (x, stack))
        return x, start + gap + stores, stack

    x, done, stack = jax.lax.fori_loop(0, run_count, run_one, (_load(stack, src), jnp.int32(0), stack))
    return _update(stack, advance(x, time + done, chain_length - done), scratch)


def checkpointed_episodes(system, program: Program, theta, states0):
    r"""Backpropagates a batch of episodes by executing `program` with `program.slots + 1` states per episode.

    The batch $B$ is the leading axis of every leaf of `states0`. One `lax.scan` runs over the
    program's ops. An op's forward chain runs its steps that store nothing as plain fused
    loops of `step` (the buffer stays out of their carry) and writes a state into the buffer
    only where the schedule stores one; then a loop over its backward passes, one `jax.vjp`
    of `step` each, in blocks of `program.block`, unrolled. On XLA:CPU the fused plain loop
    costs about a third of a step with a store or with bookkeeping, and a `jax.vjp` per step
    costs less than a step of the vjp of a `lax.scan` (which stacks and reloads its
    residuals), so segments are not backpropagated as scans. The step runs vmapped over the
    batch; the buffer is indexed with scalar slots (batch inside), which costs XLA:CPU less
    than vmapping the whole executor.

    Args:
      system: the system (its `step` and `horizon` $T$).
      program: the schedule to execute (`program(plan(T, m))`).
      theta: the outer parameters.
      states0: the episodes' initial states, a leading batch axis `[B]` on every leaf.

    Returns:
      `(theta_grad, state0_cotangents, losses [B, T], final_states, forward_steps)`: the gradient of
      $\sum_b \frac1T \sum_t \ell_t^b$ through the steps (`states0` held as an input), the cotangents of the
      float leaves of `states0`, the per-step losses, the states after the last step, and the number of step
      evaluations per episode ($C(T, m)$).
    """
    horizon, block = system.horizon, program.block
    step = jax.vmap(system.step, in_axes=(None, 0, None))
    step_out = jax.eval_shape(step, theta, states0, jnp.int32(0))
    ct_loss = jnp.full(step_out[1].shape, 1.0 / horizon, step_out[1].dtype)
    runs, back_slot = tuple(jnp.asarray(r) for r in program.runs), jnp.asarray(program.back_slot)
    forward = lambda x, time: step(theta, x, time)[0]
    advance = lambda x, time, count: jax.lax.fori_loop(0, count, lambda j, x: forward(x, time + j), x)

    def backward(x, k, ct_next):
        def f(theta, floats):  # only inexact leaves carry cotangents (not keys or counters)
            x_next, loss = step(theta, with_inexact_leaves(x, floats), k)
            return (inexact_leaves(x_next), loss), x_next

        (_, loss), vjp_fn, x_next = jax.vjp(f, theta, inexact_leaves(x), has_aux=True)
        d_theta, d_floats = vjp_fn((ct_next, ct_loss))
        return d_theta, d_floats, loss, x_next

    def body(carry, op):
        stack, ct, grad, losses, final, num_forward = carry
        stack = _forward_chain(advance, forward, runs, stack, op, program.slots)
        chain_length, back_begin, back_length = op[2], op[5], op[6]

        def backward_one(j, c):
            ct, grad, losses, final = c
            k = horizon - 1 - (back_begin + j)  # backward passes run T - 1, T - 2, ..., 0
            d_theta, ct, loss, x_next = backward(_load(stack, back_slot[back_begin + j]), k, ct)
            grad = jax.tree_util.tree_map(jnp.add, grad, d_theta)
            final = jax.tree_util.tree_map(lambda a, b: jnp.where(k == horizon - 1, a, b), x_next, final)
            return ct, grad, jax.lax.dynamic_update_index_in_dim(losses, loss, k, 0), final

        ct, grad, losses, final = _blocked_loop(back_length, block, backward_one, (ct, grad, losses, final))
        return (stack, ct, grad, losses, final, num_forward + chain_length + back_length), None

    stack = jax.tree_util.tree_map(lambda x: jnp.repeat(x[None], program.slots + 1, axis=0), states0)  # slot 0
    ct = [jnp.zeros_like(x) for x in inexact_leaves(states0)]
    grad = jax.tree_util.tree_map(jnp.zeros_like, theta)
    losses = jnp.zeros((horizon,) + step_out[1].shape, step_out[1].dtype)
    carry = (stack, ct, grad, losses, states0, jnp.zeros((), jnp.int32))
    ops = tuple(jnp.asarray(a) for a in program.ops)
    (_, ct, grad, losses, final, num_forward), _ = jax.lax.scan(body, carry, ops)
    return grad, ct, losses.T, final, num_forward


def checkpointed_episode(system, program: Program, theta, state0):
    """`checkpointed_episodes` for one episode.

    Args:
      system: the system.
      program: the schedule to execute.
      theta: the outer parameters.
      state0: the episode's initial state (no batch axis).

    Returns:
      `(theta_grad, state0_cotangent, losses [T], final_state, forward_steps)`.
    """
    batch = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], tree)
    grad, ct, losses, final, num_forward = checkpointed_episodes(system, program, theta, batch(state0))
    first = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    return grad, first(ct), losses[0], first(final), num_forward
