"""Memory-budgeted BPTT (binomial checkpointing; Gruslys et al. 2016): the planner and
the estimator.

* the closed-form planner against the O(T^2 m) dynamic program it replaced (kept here as
  the reference) for every T <= 300, m <= 12: costs, smallest splits and the whole
  action list; against a Dijkstra search over every schedule (split tree or not) for
  T <= 12; the published values Q(10, 2) = 30, Q(100, 5) = 416, Q(100, 10) = 322,
  Q(100, 20) = 278; and the closed forms ``C(t, 1) = t (t + 1) / 2``, ``C(t, m >= t) =
  2 t - 1``;
* the flattened schedule simulated in plain Python (and, at T = 1e6, checked
  vectorized): it never holds more than ``memory_budget`` states, reads every slot with
  the state it claims, backpropagates the steps ``T - 1, ..., 0`` once each and
  evaluates ``C(T, m)`` steps;
* ``checkpointed_bptt`` equals ``full_bptt`` (gradient, worker state, ``info``) at
  several budgets, on systems with a fixed init, a theta-dependent init and a PRNG key
  in the state, also at T = 1e4 with three workers, and runs exactly ``C(T, m)`` step
  evaluations (as the executor reports them, and as a callback in the step counts them);
* the executor's program: the runs of stores of every op (plain fused steps, then stored
  steps) cover the schedule's stores, in consecutive slots;
* budgets in bytes: units, the state's size, the count they give, the refusal of one
  below a state (naming the minimum); bad budgets raise, naming ``memory_budget``;
* the compiled temporary memory for ``T = 1000`` is far below full BPTT's.
"""

import functools
import heapq
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import noisy_rnn_system, rnn_system, rnn_theta
from unroll._system import MemoryBytes, check_memory_budget
from unroll.checkpointing import (
    budget_slots,
    checkpointed_episode,
    forward_steps,
    plan,
    repetitions,
    spine,
    split,
    state_bytes,
)
from unroll.checkpointing import program as make_program

KEY = jax.random.PRNGKey(0)


def tree_max_abs_diff(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float64) - jnp.asarray(y, jnp.float64))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


# --------------------------------------------------------------------------- the planner


def dp_table(horizon, budget):
    """The reference: the Gruslys et al. (2016) dynamic program, ``C(t, m) = min_y [y +
    C(t - y, m - 1) + C(y, m)]`` from ``C(1, m) = 1``, ``C(t, 1) = t (t + 1) / 2``, in
    ``O(T^2 m)``, as the planner solved it before its closed form. Returns ``costs[t, m]``
    and the smallest minimizing ``splits[t, m]`` (0 for leaves)."""
    costs = np.zeros((horizon + 1, budget + 1), np.int64)
    splits = np.zeros((horizon + 1, budget + 1), np.int64)
    t = np.arange(horizon + 1)
    costs[:, 1] = t * (t + 1) // 2
    costs[1, 1:] = 1
    for length in range(2, horizon + 1):
        for m in range(2, budget + 1):
            ys = np.arange(1, length)
            total = ys + costs[length - ys, m - 1] + costs[ys, m]
            costs[length, m], splits[length, m] = total.min(), ys[np.argmin(total)]
    return costs, splits


def dp_actions(splits, horizon, budget):
    """The DP's schedule flattened the way the planner flattens it (store, right part,
    left part; a leaf recomputes ``length - 1, ..., 0`` steps), one Python step at a time."""
    out, todo = [], [(0, horizon, budget, 0)]
    while todo:
        start, length, slots, slot = todo.pop()
        y = splits[length, slots]
        if y == 0:
            out += [(slot, start, k, False, -1) for k in range(length - 1, -1, -1)]
            continue
        out.append((slot, start, y, True, slot + 1))
        todo += [(start, y, slots, slot), (start + y, length - y, slots - 1, slot + 1)]
    return [np.asarray(column) for column in zip(*out)]


def brute_force_search(horizon, slots):
    """The least forward steps over *every* schedule, split tree or not: Dijkstra over
    (the set of steps whose states are stored, the next step to backpropagate). A move
    loads a stored state ``a`` and advances to ``b``, then either stores ``s_b`` (into a
    free slot, or in place of any stored state) or, at ``b = k``, backpropagates step
    ``k`` (one more evaluation), after which states past ``k - 1`` are of no use."""
    start = (frozenset([0]), horizon - 1)
    best, heap, tie = {start: 0}, [(0, 0, start)], 0
    while heap:
        cost, _, (stored, k) = heapq.heappop(heap)
        if k < 0:
            return cost
        if best[(stored, k)] != cost:
            continue
        moves = []
        for a in stored:
            moves.append((cost + k - a + 1, (frozenset(x for x in stored if x < k), k - 1)))
            for b in range(a + 1, k + 1):
                if b in stored:
                    continue
                if len(stored) < slots:
                    moves.append((cost + b - a, (stored | {b}, k)))
                else:
                    moves += [(cost + b - a, ((stored - {x}) | {b}, k)) for x in stored]
        for c, node in moves:
            if c < best.get(node, c + 1):
                best[node], tie = c, tie + 1
                heapq.heappush(heap, (c, tie, node))


def test_closed_form_matches_the_dynamic_program():
    """Every T <= 300, m <= 12: the same forward steps, the same (smallest) split at every
    (length, slots), the same action list and slots used."""
    costs, splits = dp_table(300, 12)
    for t in range(1, 301):
        for m in range(1, 13):
            assert forward_steps(t, m) == costs[t, m], (t, m)
            assert split(t, m) == splits[t, m], (t, m)
            p = plan(t, m)
            assert p.forward_steps == costs[t, m] and p.split == splits[t, m]
            actions = p.actions()
            expected = dp_actions(splits, t, m)
            for got, want in zip(actions, expected):
                np.testing.assert_array_equal(got, want, err_msg=f"T={t}, m={m}")
            assert p.num_actions == len(expected[0])
            assert p.slots_used == max(expected[0].max(), expected[4].max()) + 1


def test_planner_matches_brute_force_search():
    for t in range(1, 13):
        for m in range(1, 13):
            assert plan(t, m).forward_steps == brute_force_search(t, m), (t, m)


def test_published_values():
    """Q(10, 2), Q(100, 5), Q(100, 10), Q(100, 20) (Griewank & Walther's counts of extra
    advances, ``r T - binom(m + r, m + 1)``, plus the T evaluations with a backward pass)."""
    assert [plan(t, m).forward_steps for t, m in [(10, 2), (100, 5), (100, 10), (100, 20)]] == [30, 416, 322, 278]
    assert plan(1000, 10).forward_steps == 4636  # ../shared/algorithms.md


@pytest.mark.parametrize("t", [1, 2, 3, 10, 57])
def test_closed_forms(t):
    assert plan(t, 1).forward_steps == t * (t + 1) // 2
    # every step but the last runs twice at least; enough slots reach that bound
    for m in (t, t + 1, 3 * t):
        assert plan(t, m).forward_steps == 2 * t - 1
    costs = [plan(t, m).forward_steps for m in range(1, t + 2)]
    assert costs == sorted(costs, reverse=True)  # more memory never costs more


def test_repetitions_bracket_the_horizon():
    for t, m in [(1, 1), (2, 1), (10, 2), (11, 2), (10**6, 100), (10**6, 3), (123457, 17)]:
        r = repetitions(t, m)
        assert math.comb(m + r - 1, m) * (r > 0) < t <= math.comb(m + r, m)


def test_spines_are_runs_of_unit_splits():
    """``spine(t, m)``, the run of one-step splits ``actions()`` emits at once, against the
    splits themselves."""
    for t in range(2, 200):
        for m in range(2, 40):
            if split(t, m) != 1:
                continue
            k = spine(t, m)
            assert all(split(t - i, m - i) == 1 for i in range(k)), (t, m, k)
            assert split(t - k, m - k) != 1, (t, m, k)


def tree_cost(seg):
    """Forward steps of a split tree, by the recurrence read off the tree itself."""
    if seg.split == 0:
        return 1 if seg.length == 1 else seg.length * (seg.length + 1) // 2
    assert seg.left.length == seg.split and seg.right.length == seg.length - seg.split
    assert seg.left.slots == seg.slots and seg.right.slots == seg.slots - 1
    assert seg.right.start == seg.start + seg.split
    return seg.split + tree_cost(seg.right) + tree_cost(seg.left)


def simulate(p):
    """Runs ``p.actions()`` on symbolic states (a state is the episode step it belongs to):
    returns the step evaluations, the backpropagated steps in order, the most slots held."""
    slots = {0: 0}  # slot -> episode step of the state in it
    backprop, forward, most = [], 0, 1
    a = p.actions()
    for src, time, count, store, dst in zip(a.src, a.time, a.count, a.store, a.dst):
        assert slots.get(int(src)) == time, "the slot read does not hold the state claimed"
        forward += int(count)
        if store:
            assert dst == src + 1
            slots = {k: v for k, v in slots.items() if k <= src}  # deeper slots are free
            slots[int(dst)] = int(time + count)
        else:
            slots = {k: v for k, v in slots.items() if k <= src}
            backprop.append(int(time + count))
            forward += 1  # the step evaluated with its backward pass
        most = max(most, len(slots))
    return forward, backprop, most


@pytest.mark.parametrize("horizon,budget", [(1, 1), (1, 4), (6, 2), (12, 3), (40, 1), (40, 5), (100, 10), (300, 7)])
def test_schedule_respects_budget_and_cost(horizon, budget):
    p = plan(horizon, budget)
    forward, backprop, most = simulate(p)
    assert backprop == list(range(horizon - 1, -1, -1))
    assert forward == p.forward_steps == tree_cost(p.split_tree())
    assert most == p.slots_used <= budget
    assert p.split == p.split_tree().split


@pytest.mark.parametrize("horizon,budget", [(10**6, 100), (10**6, 10**6), (300_001, 2), (10**5, 777)])
def test_long_horizon_schedules(horizon, budget):
    """The flattened schedule at long horizons, checked vectorized: the backward passes
    run T - 1, ..., 0; the counts add up to C(T, m); every store writes the next slot;
    every action reads a slot that the schedule filled with the state it claims."""
    p = plan(horizon, budget)
    a = p.actions()
    assert p.num_actions == a.src.size
    back = ~a.store
    np.testing.assert_array_equal((a.time + a.count)[back], np.arange(horizon - 1, -1, -1))
    assert int(a.count.sum()) + horizon == p.forward_steps == forward_steps(horizon, budget)
    assert (a.dst[a.store] == a.src[a.store] + 1).all() and p.slots_used <= budget
    # every read sees the state last written into its slot (slot 0 starts with step 0)
    n = p.num_actions
    writes = np.flatnonzero(a.store)
    slot = np.concatenate([[0], a.dst[writes], a.src])
    order_in_time = np.concatenate([[-1], writes, np.arange(n)])  # a store writes after its own read
    is_write = np.arange(slot.size) <= writes.size
    value = np.concatenate([[0], (a.time + a.count)[writes], a.time])
    order = np.lexsort((~is_write, order_in_time, slot))  # by slot, then time (a store reads and writes two slots)
    slot, is_write, value = slot[order], is_write[order], value[order]
    latest = np.maximum.accumulate(np.where(is_write, np.arange(slot.size), -1))
    reads = ~is_write
    assert (latest[reads] >= 0).all() and (slot[latest[reads]] == slot[reads]).all()
    np.testing.assert_array_equal(value[latest[reads]], value[reads])
    assert max(a.src.max(), a.dst.max()) + 1 == p.slots_used


# --------------------------------------------------------------------------- the estimator


def rnn_problem(horizon=7):
    return rnn_system(n=3, m=2, horizon=horizon), rnn_theta(n=3, m=2)


def learned_h0_problem(horizon=7):
    return rnn_system(n=3, m=2, horizon=horizon, learned_h0=True), rnn_theta(n=3, m=2)


def noisy_problem(horizon=7):
    return noisy_rnn_system(n=3, m=2, horizon=horizon), rnn_theta(n=3, m=2)


PROBLEMS = {"rnn": rnn_problem, "rnn_learned_h0": learned_h0_problem, "noisy_rnn": noisy_problem}


@functools.cache
def full_bptt_run(problem, num_calls=2):
    """``full_bptt``'s initial state and its first ``num_calls`` estimates (compiled once
    per problem, shared by the budgets)."""
    system, theta = PROBLEMS[problem]()
    full = unroll.full_bptt(system)
    state = jax.jit(full.init)(theta, KEY)
    estimate, calls = jax.jit(full.estimate), []
    for i in range(num_calls):
        grad, state, info = estimate(theta, state, jax.random.fold_in(KEY, i))
        calls.append((grad, state, info))
    return jax.jit(full.init)(theta, KEY), calls


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("budget", [1, 2, 3, 7, 12])
def test_equals_full_bptt(problem, budget):
    system, theta = PROBLEMS[problem]()
    full_init_state, full_calls = full_bptt_run(problem)
    ckpt = unroll.checkpointed_bptt(system, memory_budget=budget)
    state = jax.jit(ckpt.init)(theta, KEY)
    assert tree_max_abs_diff(state, full_init_state) == 0
    estimate = jax.jit(ckpt.estimate)
    for i, (g_full, full_state, info_full) in enumerate(full_calls):  # the second call goes on from the first
        grad, state, info = estimate(theta, state, jax.random.fold_in(KEY, i))
        assert tree_max_abs_diff(grad, g_full) < 1e-10
        assert tree_max_abs_diff(state, full_state) < 1e-10
        assert set(info) == set(info_full)
        np.testing.assert_allclose(info["loss"], info_full["loss"], rtol=1e-12)
        assert int(info["steps"]) == system.horizon


@pytest.mark.parametrize("budget", [1, 3, 6])
def test_equals_full_bptt_longer_horizon(budget):
    """Deeper split trees (T = 40), theta-dependent init."""
    system, theta = learned_h0_problem(horizon=40)
    full, ckpt = unroll.full_bptt(system), unroll.checkpointed_bptt(system, memory_budget=budget)
    g_full, _, _ = jax.jit(full.estimate)(theta, full.init(theta, KEY), KEY)
    g_ckpt, _, _ = jax.jit(ckpt.estimate)(theta, ckpt.init(theta, KEY), KEY)
    assert tree_max_abs_diff(g_ckpt, g_full) < 1e-10
    assert tree_max_abs_diff(g_ckpt, unroll.exact_gradient(system, theta, KEY)) < 1e-10


@functools.cache
def long_full_bptt(horizon=10_000, num_workers=3):
    system, theta = learned_h0_problem(horizon)
    full = unroll.full_bptt(system, num_workers=num_workers)
    state = full.init(theta, KEY)
    return system, theta, jax.jit(full.estimate)(theta, state, KEY)


@pytest.mark.parametrize("budget", [3, 100, "1KiB"])
def test_equals_full_bptt_at_ten_thousand_steps(budget):
    """T = 1e4, float64, three workers, a theta-dependent init: the same gradient, state and
    losses as full BPTT to 1e-10 (a count of 3 recomputes each step up to 37 times; "1KiB"
    is 42 slots of this 24-byte state)."""
    system, theta, (g_full, state_full, info_full) = long_full_bptt()
    ckpt = unroll.checkpointed_bptt(system, num_workers=3, memory_budget=budget)
    grad, state, info = jax.jit(ckpt.estimate)(theta, ckpt.init(theta, KEY), KEY)
    assert tree_max_abs_diff(grad, g_full) < 1e-10
    assert tree_max_abs_diff(state, state_full) < 1e-10
    np.testing.assert_allclose(info["loss"], info_full["loss"], rtol=1e-12)


def test_executes_the_planned_number_of_steps_at_ten_thousand():
    system, theta = rnn_problem(10_000)
    p = plan(10_000, 3)
    run = jax.jit(lambda theta, s0: checkpointed_episode(system, make_program(p), theta, s0))
    *_, num_forward = run(theta, system.init(theta, KEY))
    assert int(num_forward) == p.forward_steps == dp_table(10_000, 3)[0][10_000, 3]  # the DP, O(T^2 m)


def test_eager_matches_jit():
    system, theta = learned_h0_problem()
    est = unroll.checkpointed_bptt(system, memory_budget=2)
    state = est.init(theta, KEY)
    a = est.estimate(theta, state, KEY)
    b = jax.jit(est.estimate)(theta, state, KEY)
    assert tree_max_abs_diff(a, b) <= 1e-14


@pytest.mark.parametrize("horizon,budget", [(7, 1), (7, 2), (40, 3), (100, 10)])
@pytest.mark.parametrize("block", [1, 3])
def test_executes_the_planned_number_of_steps(horizon, budget, block):
    system, theta = rnn_problem(horizon)
    p = plan(horizon, budget)
    program = make_program(p, block)
    run = jax.jit(lambda theta, s0: checkpointed_episode(system, program, theta, s0))
    *_, num_forward = run(theta, system.init(theta, KEY))
    assert int(num_forward) == p.forward_steps


@pytest.mark.parametrize("horizon,budget", [(1, 1), (7, 1), (7, 2), (40, 3), (57, 5), (100, 10), (64, 64)])
def test_step_evaluations_counted_by_a_callback(horizon, budget):
    """Every evaluation of `step` (the plain fused loops, the stores, the one inside each
    backward pass), counted by a host callback in the step itself, not by the executor:
    exactly the planner's C(T, m)."""
    system, theta = rnn_problem(horizon)
    count = [0]

    def counting(theta, h, t):
        jax.debug.callback(lambda t: count.__setitem__(0, count[0] + 1), t)  # fires at every evaluation
        return system.step(theta, h, t)

    counted = unroll.System(system.init, counting, horizon)
    p = plan(horizon, budget)
    run = jax.jit(lambda theta, s0: checkpointed_episode(counted, make_program(p), theta, s0))
    jax.block_until_ready(run(theta, system.init(theta, KEY)))
    jax.effects_barrier()
    assert count[0] == p.forward_steps


def test_program_runs_cover_the_stores():
    """The runs of every op: consecutive within the op, stores landing in consecutive slots
    from the op's source slot on, the op's chain ending at its last store or recomputing
    into the scratch slot; as many stored steps as the schedule has stores."""
    for horizon, budget in [(40, 3), (100, 10), (1000, 20), (10_000, 100)]:
        p = plan(horizon, budget)
        prog = make_program(p)
        src, _, chain_length, run_begin, run_count, _, back_length = (np.asarray(c, np.int64) for c in prog.ops)
        start, gap, stores, slot = (np.asarray(r, np.int64) for r in prog.runs)
        assert int(stores[: run_count.sum()].sum()) == int(p.actions().store.sum())
        for o in range(src.size):
            r = np.arange(run_begin[o], run_begin[o] + run_count[o])
            if r.size:
                np.testing.assert_array_equal(start[r[1:]], (start + gap + stores)[r[:-1]])
                np.testing.assert_array_equal(slot[r], src[o] + 1 + np.concatenate([[0], np.cumsum(stores[r])[:-1]]))
                assert start[r[0]] == 0 and (start + gap + stores)[r[-1]] <= chain_length[o]
            assert (stores[r] >= 1).all() and back_length[o] >= 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "budget, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (None, TypeError), (True, TypeError)]
)
def test_bad_budget_raises(budget, error):
    system, _ = rnn_problem()
    with pytest.raises(error, match="memory_budget") as err:
        unroll.checkpointed_bptt(system, memory_budget=budget)
    assert repr(budget) in str(err.value) and "memory_budget=" in str(err.value)
    with pytest.raises(error, match="memory_budget"):
        plan(7, budget)


@pytest.mark.parametrize("budget", ["3", "64 mb", "-1MiB", "MiB", "1e3B", "64MiBs"])
def test_bad_bytes_raise_at_construction(budget):
    system, _ = rnn_problem()
    with pytest.raises(ValueError, match="is not a size in bytes") as err:
        unroll.checkpointed_bptt(system, memory_budget=budget)
    assert repr(budget) in str(err.value) and "memory_budget='64MiB'" in str(err.value)


def test_zero_bytes_and_plan_of_bytes_raise():
    system, _ = rnn_problem()
    with pytest.raises(ValueError, match="less than one byte"):
        unroll.checkpointed_bptt(system, memory_budget="0.0001B")
    with pytest.raises(TypeError, match="`plan` counts states.*budget_slots"):
        plan(7, "64MiB")


@pytest.mark.parametrize(
    "text, size",
    [("64MiB", 64 * 2**20), ("1.5kB", 1500), (" 2 GiB ", 2 * 2**30), ("512B", 512), ("3KB", 3000), ("0.5KiB", 512)],
)
def test_bytes_units(text, size):
    assert check_memory_budget(text) == MemoryBytes(text, size)


def test_state_bytes_counts_every_leaf():
    state = (jnp.zeros((3, 4)), jnp.zeros((), jnp.int32), jax.random.key(0), jax.random.PRNGKey(1), 2.0)
    assert state_bytes(state) == 3 * 4 * 8 + 4 + 8 + 8 + 8  # float64 (x64 is on), int32, two keys, a float
    assert state_bytes(jax.eval_shape(lambda: state)) == state_bytes(state)


def test_bytes_budget_is_its_count_of_states():
    """The noisy RNN's state (h [3] float64, a raw key) is 32 bytes: 5 states and 31 bytes
    are 5 slots, so the estimate is exactly the count-5 one."""
    system, theta = noisy_problem(horizon=20)
    assert state_bytes(system.init(theta, KEY)) == 32
    assert budget_slots("191B", system.init(theta, KEY)) == 5 and budget_slots(7, None) == 7
    by_bytes, by_count = (unroll.checkpointed_bptt(system, memory_budget=b) for b in ("191B", 5))
    a = jax.jit(by_bytes.estimate)(theta, by_bytes.init(theta, KEY), KEY)
    b = jax.jit(by_count.estimate)(theta, by_count.init(theta, KEY), KEY)
    assert tree_max_abs_diff(a, b) == 0


def test_bytes_below_one_state_are_refused_at_init():
    system, theta = noisy_problem()
    est = unroll.checkpointed_bptt(system, memory_budget="31B")  # the size is known once init sees theta
    with pytest.raises(ValueError, match="cannot hold one state") as err:
        est.init(theta, KEY)
    assert "'31B'" in str(err.value) and "takes 32 B" in str(err.value) and "memory_budget='32B'" in str(err.value)
    est = unroll.checkpointed_bptt(system, memory_budget="32B")  # the minimum it names works: one slot
    grad, _, _ = jax.jit(est.estimate)(theta, est.init(theta, KEY), KEY)
    full = unroll.full_bptt(system)
    assert tree_max_abs_diff(grad, jax.jit(full.estimate)(theta, full.init(theta, KEY), KEY)[0]) < 1e-10


def test_budget_bounds():
    system, theta = rnn_problem()
    for budget in (1, np.int64(2), system.horizon, 10 * system.horizon):  # above T is allowed
        est = unroll.checkpointed_bptt(system, memory_budget=budget)
        grad, _, info = jax.eval_shape(est.estimate, theta, jax.eval_shape(est.init, theta, KEY), KEY)
        assert {"loss", "steps"} <= set(info)
    with pytest.raises(ValueError, match="horizon"):
        plan(0, 3)


# --------------------------------------------------------------------------- memory


def test_compiled_memory_below_full_bptt():
    """T = 1000, hidden 64, budget 10: the compiled temporaries hold ~10 states plus the
    1000 scalar losses, against full BPTT's 1000 states and activations."""
    system, theta = rnn_system(n=64, m=2, horizon=1000), rnn_theta(n=64, m=2)

    def temp_bytes(est):
        state = jax.eval_shape(est.init, theta, KEY)
        stats = jax.jit(est.estimate).lower(theta, state, KEY).compile().memory_analysis()
        if stats is None:
            pytest.skip("memory_analysis() is not available on this backend")
        return stats.temp_size_in_bytes

    full = temp_bytes(unroll.full_bptt(system))
    ckpt = temp_bytes(unroll.checkpointed_bptt(system, memory_budget=10))
    state_bytes = 64 * 8
    assert full > 1000 * state_bytes  # sanity: full BPTT keeps every state
    assert ckpt < full / 10, (ckpt, full)


@pytest.mark.parametrize("memory_budget", [1, 2, 3])
def test_horizon_one(memory_budget):
    """One step: no forward chain to replay (found by tests/test_properties.py)."""
    system = unroll.System(lambda theta, key: jnp.zeros(()), lambda theta, s, t: (s + theta, (s + theta) ** 2), 1)
    theta = jnp.asarray(0.7)
    est = unroll.checkpointed_bptt(system, memory_budget=memory_budget)
    grad, _, info = est.estimate(theta, est.init(theta, KEY), KEY)
    np.testing.assert_allclose(grad, 2 * 0.7, rtol=1e-12)  # d/dtheta (0 + theta)^2
    assert float(info["loss"]) == pytest.approx(0.49, rel=1e-12)
