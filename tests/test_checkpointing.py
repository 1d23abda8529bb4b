"""Memory-budgeted BPTT (Gruslys et al. 2016, BPTT-HSM): the planner and the estimator.

* the planner's costs against a brute force over every split at every level (no
  memoization shared with the planner), the published values ``C(10, 2) = 30`` and
  ``C(100, 10) = 322``, and the closed forms ``C(t, 1) = t (t + 1) / 2``,
  ``C(t, m >= t) = 2 t - 1``;
* the flattened schedule simulated in plain Python: it never holds more than
  ``memory_budget`` states, reads every slot with the state it claims, backpropagates
  the steps ``T - 1, ..., 0`` once each and evaluates ``C(T, m)`` steps;
* ``checkpointed_bptt`` equals ``full_bptt`` (gradient, worker state, ``info``) at
  several budgets, on systems with a fixed init, a theta-dependent init and a PRNG key
  in the state, and runs exactly ``C(T, m)`` step evaluations;
* bad budgets raise, naming ``memory_budget``;
* the compiled temporary memory for ``T = 1000`` is far below full BPTT's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import noisy_rnn_system, rnn_system, rnn_theta
from unroll.checkpointing import checkpointed_episode, plan
from unroll.checkpointing import program as make_program

KEY = jax.random.PRNGKey(0)


def tree_max_abs_diff(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float64) - jnp.asarray(y, jnp.float64))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


# --------------------------------------------------------------------------- the planner


def brute_force_cost(t, m):
    """The least forward steps over every schedule: every split y at every level,
    recursively, nothing cached."""
    if t == 1:
        return 1
    if m == 1:
        return sum(k + 1 for k in range(t))  # step k is reached from the start each time
    return min(y + brute_force_cost(t - y, m - 1) + brute_force_cost(y, m) for y in range(1, t))


def test_planner_matches_brute_force():
    for t in range(1, 13):
        for m in range(1, 5):
            p = plan(t, m)
            assert p.forward_steps == brute_force_cost(t, m), (t, m)
            for tt in range(1, t + 1):  # the whole table, not just the top entry
                for mm in range(1, m + 1):
                    assert p.cost(tt, mm) == brute_force_cost(tt, mm), (t, m, tt, mm)


def test_known_values():
    assert plan(10, 2).forward_steps == 30
    assert plan(100, 10).forward_steps == 322


@pytest.mark.parametrize("t", [1, 2, 3, 10, 57])
def test_closed_forms(t):
    assert plan(t, 1).forward_steps == t * (t + 1) // 2
    # every step but the last runs twice at least; enough slots reach that bound
    for m in (t, t + 1, 3 * t):
        assert plan(t, m).forward_steps == 2 * t - 1
    costs = [plan(t, m).forward_steps for m in range(1, t + 2)]
    assert costs == sorted(costs, reverse=True)  # more memory never costs more


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


def test_planner_is_fast_for_long_horizons():
    p = plan(2000, 50)  # O(T^2 m) element operations, vectorized: about a second
    assert 2 * 2000 - 1 < p.forward_steps < plan(2000, 10).forward_steps < plan(2000, 2).forward_steps


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


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "budget, error",
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("3", TypeError), (None, TypeError), (True, TypeError)],
)
def test_bad_budget_raises(budget, error):
    system, _ = rnn_problem()
    with pytest.raises(error, match="memory_budget") as err:
        unroll.checkpointed_bptt(system, memory_budget=budget)
    assert repr(budget) in str(err.value) and "memory_budget=" in str(err.value)
    with pytest.raises(error, match="memory_budget"):
        plan(7, budget)


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
