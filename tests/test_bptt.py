"""Full and truncated BPTT against independent answers.

* full BPTT vs central finite differences of ``unroll.episode_loss`` (float64), vs a
  closed form for the linear system, and vs ``unroll.exact_gradient``;
* truncated BPTT with ``K = T`` vs full BPTT;
* truncated BPTT with ``K < T`` vs the closed-form truncated gradient of the scalar
  linear-quadratic system, windows crossing episode ends included;
* staggered workers: their positions after ``init`` and the estimate as the mean of
  independently computed per-worker window gradients;
* ``jax.jit(est.estimate)`` vs the unjitted function;
* windows of whole episodes (full BPTT, truncated BPTT with ``K = T`` and one worker): their
  states always sit at episode ends, and the engine's aligned path (no reset inside the
  scan) equals its general path (per-step resets on a schedule).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unroll
from tests.systems import (
    linear_exact_gradient,
    linear_system,
    noisy_rnn_system,
    rnn_system,
    rnn_theta,
    scalar_lq_closed_form_D,
    scalar_lq_system,
    scalar_lq_windows,
)
from unroll._engine import run_windows, start_workers
from unroll.contract import EpisodeStart, Rule, Step

KEY = jax.random.PRNGKey(0)


def tree_max_abs_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def jitted(est):
    """``(jax.jit(est.init), jax.jit(est.estimate))``: unjitted windows re-trace their scan
    on every call, too slow for many windows (``test_jit_matches_unjitted`` covers eager)."""
    return jax.jit(est.init), jax.jit(est.estimate)


def finite_difference_gradient(system, theta, key, h=1e-5):
    """Central differences of the mean episode loss over every scalar of theta."""
    flat, unravel = ravel_pytree(theta)
    f = jax.jit(jax.vmap(lambda v: unroll.episode_loss(system, unravel(v), key)))
    basis = h * jnp.eye(flat.size, dtype=flat.dtype)
    return unravel((f(flat + basis) - f(flat - basis)) / (2 * h))


def relative_error(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def rnn_problem():
    return rnn_system(n=3, m=2, horizon=6), rnn_theta(n=3, m=2)


def linear_problem():
    return linear_system(horizon=5), jnp.asarray([0.3, -0.7], jnp.float64)


def rnn_learned_h0_problem():
    return rnn_system(n=3, m=2, horizon=6, learned_h0=True), rnn_theta(n=3, m=2)


PROBLEMS = {"rnn": rnn_problem, "linear": linear_problem, "rnn_learned_h0": rnn_learned_h0_problem}


# --------------------------------------------------------------------------- full BPTT


@pytest.mark.parametrize("problem", PROBLEMS)
def test_full_bptt_matches_finite_differences(problem):
    system, theta = PROBLEMS[problem]()
    est = unroll.full_bptt(system)
    init, estimate = jitted(est)
    state = init(theta, KEY)
    grad, state, info = estimate(theta, state, KEY)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(theta)
    for g, th in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(theta)):
        assert g.shape == th.shape and g.dtype == jnp.float64
    fd = finite_difference_gradient(system, theta, KEY)
    assert relative_error(grad, fd) < 1e-6
    # the loss reported is the mean episode loss; a whole episode was unrolled
    np.testing.assert_allclose(info["loss"], unroll.episode_loss(system, theta, KEY), rtol=1e-12)
    assert int(info["steps"]) == system.horizon


def test_full_bptt_matches_linear_closed_form():
    system, theta = linear_problem()
    est = unroll.full_bptt(system)
    init, estimate = jitted(est)
    grad, _, _ = estimate(theta, init(theta, KEY), KEY)
    np.testing.assert_allclose(grad, linear_exact_gradient(theta, horizon=5), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_full_bptt_equals_exact_gradient(problem):
    system, theta = PROBLEMS[problem]()
    est = unroll.full_bptt(system)
    init, estimate = jitted(est)
    state = init(theta, KEY)
    exact = unroll.exact_gradient(system, theta, KEY)
    for _ in range(2):  # every call is a fresh whole episode: the same answer each time
        grad, state, _ = estimate(theta, state, KEY)
        assert tree_max_abs_diff(grad, exact) < 1e-12


def test_full_bptt_num_workers_averages_episodes():
    system, theta = rnn_problem()
    est = unroll.full_bptt(system, num_workers=3)
    init, estimate = jitted(est)
    grad, _, info = estimate(theta, init(theta, KEY), KEY)
    assert tree_max_abs_diff(grad, unroll.exact_gradient(system, theta, KEY)) < 1e-12
    assert int(info["steps"]) == 3 * system.horizon


# --------------------------------------------------------------------------- truncated, K = T


@pytest.mark.parametrize("problem", ["rnn", "rnn_learned_h0"])
def test_truncated_bptt_full_window_equals_full_bptt(problem):
    system, theta = PROBLEMS[problem]()
    full = unroll.full_bptt(system)
    trunc = unroll.truncated_bptt(system, truncation=system.horizon, num_workers=1)
    (full_init, full_estimate), (trunc_init, trunc_estimate) = jitted(full), jitted(trunc)
    full_state, trunc_state = full_init(theta, KEY), trunc_init(theta, KEY)
    for i in range(3):
        key = jax.random.fold_in(KEY, i)
        g_full, full_state, info_full = full_estimate(theta, full_state, key)
        g_trunc, trunc_state, info_trunc = trunc_estimate(theta, trunc_state, key)
        assert tree_max_abs_diff(g_trunc, g_full) < 1e-10
        np.testing.assert_allclose(info_trunc["loss"], info_full["loss"], rtol=1e-12)
        assert int(info_trunc["steps"]) == system.horizon


# --------------------------------------------------------------------------- truncated, K < T


A, C, S0, T = 0.7, 1.3, 0.4, 7


def test_scalar_lq_reference_is_the_closed_form():
    """The numpy reference agrees with ``ds_k/dtheta = (1 - a^k)/(1 - a)`` in a window
    without reset, and with a direct derivative of the window loss by finite differences
    (so the reference itself is checked, independently of unroll)."""
    theta, K = 0.25, 3
    w = scalar_lq_windows(theta, K, 1, a=A, c=C, s0=S0, horizon=T)[0]
    s = [S0]
    for _ in range(K):
        s.append(A * s[-1] + theta)
    by_formula = sum((s[k] - C) * scalar_lq_closed_form_D(A, k) for k in range(1, K + 1)) / K
    np.testing.assert_allclose(w["grad"], by_formula, rtol=1e-13)

    # finite differences of the window loss with the incoming state and reset rule fixed
    def window_loss(th, s, t):
        total = 0.0
        for _ in range(K):
            if t == T:
                s, t = S0, 0
            s, t = A * s + th, t + 1
            total += 0.5 * (s - C) ** 2
        return total / K

    windows = scalar_lq_windows(theta, K, 6, a=A, c=C, s0=S0, horizon=T)
    s_in, t_in = S0, 0
    for win in windows:
        h = 1e-6
        fd = (window_loss(theta + h, s_in, t_in) - window_loss(theta - h, s_in, t_in)) / (2 * h)
        np.testing.assert_allclose(win["grad"], fd, rtol=1e-7)
        s_in, t_in = win["s"], win["t"]


@pytest.mark.parametrize("T,K", [(7, 3), (7, 2), (7, 5), (7, 7), (7, 1), (1, 1)])
def test_truncated_bptt_closed_form_across_episode_ends(T, K):
    """One worker, ``T = 7`` not a multiple of ``K``: windows cross the episode end at
    every position (for K = 3: windows [0..2], [3..5], [6 | 0, 1], [2..4], [5, 6 | 0],
    [1..3], ...), the reset sometimes on a window's last step. Edge cases: windows
    aligned to episodes (K = T), single steps, a one-step episode."""
    system = scalar_lq_system(a=A, c=C, s0=S0, horizon=T)
    theta = jnp.asarray(0.25, jnp.float64)
    num_windows = 2 * T + 1  # every phase of the window against the episode
    expected = scalar_lq_windows(float(theta), K, num_windows, a=A, c=C, s0=S0, horizon=T)
    est = unroll.truncated_bptt(system, truncation=K, num_workers=1)
    init, estimate = jitted(est)
    state = init(theta, KEY)
    for i, want in enumerate(expected):
        grad, state, info = estimate(theta, state, jax.random.fold_in(KEY, i))
        assert grad.shape == () and grad.dtype == jnp.float64
        np.testing.assert_allclose(grad, want["grad"], rtol=1e-10, atol=1e-12, err_msg=f"window {i}")
        np.testing.assert_allclose(info["loss"], want["loss"], rtol=1e-10, err_msg=f"window {i}")
        assert int(info["steps"]) == 1 * K
        np.testing.assert_allclose(state.workers.state[0, 0], want["s"], rtol=1e-12)
        assert int(state.workers.t[0, 0]) == want["t"]


def test_truncated_bptt_is_not_full_bptt_when_k_lt_t():
    """Sanity of the closed-form test: the truncated gradient differs from the episode
    gradient (otherwise the previous test could not tell truncation from full BPTT)."""
    system = scalar_lq_system(a=A, c=C, s0=S0, horizon=T)
    theta = jnp.asarray(0.25, jnp.float64)
    est = unroll.truncated_bptt(system, truncation=3)
    init, estimate = jitted(est)
    state = init(theta, KEY)
    grads = []
    for _ in range(T):  # 7 windows of 3 = 3 episodes, every window phase once
        g, state, _ = estimate(theta, state, KEY)
        grads.append(float(g))
    exact = float(unroll.exact_gradient(system, theta, KEY))
    assert abs(np.mean(grads) - exact) > 1e-3


# --------------------------------------------------------------------------- staggered workers


@pytest.mark.parametrize("W,K", [(3, 3), (4, 2), (7, 7), (10, 1)])
def test_staggered_workers_scalar_lq(W, K):
    system = scalar_lq_system(a=A, c=C, s0=S0, horizon=T)
    theta = jnp.asarray(-0.4, jnp.float64)
    est = unroll.truncated_bptt(system, truncation=K, num_workers=W)
    init, estimate = jitted(est)
    state = init(theta, KEY)

    offsets = [(w * T) // W for w in range(W)]
    t0 = np.asarray(state.workers.t)
    assert t0.shape == (W, 1)
    # worker w sits floor(w T / W) steps into its episode. (unroll stores "at the start
    # of an episode" as t == horizon, "episode over, next step resets", hence the mod.)
    np.testing.assert_array_equal(t0[:, 0] % T, offsets)
    for w, o in enumerate(offsets):
        if o > 0:
            start = scalar_lq_windows(float(theta), o, 1, a=A, c=C, s0=S0, horizon=T)[0]
            np.testing.assert_allclose(state.workers.state[w, 0], start["s"], rtol=1e-12)

    num_windows = 5
    per_worker = [
        scalar_lq_windows(float(theta), K, num_windows, offset=o, a=A, c=C, s0=S0, horizon=T) for o in offsets
    ]
    for i in range(num_windows):
        grad, state, info = estimate(theta, state, jax.random.fold_in(KEY, i))
        want_grad = np.mean([pw[i]["grad"] for pw in per_worker])
        want_loss = np.mean([pw[i]["loss"] for pw in per_worker])
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12, err_msg=f"window {i}")
        np.testing.assert_allclose(info["loss"], want_loss, rtol=1e-10, err_msg=f"window {i}")
        assert int(info["steps"]) == W * K
        np.testing.assert_array_equal(np.asarray(state.workers.t)[:, 0], [pw[i]["t"] for pw in per_worker])


def reference_truncated_windows(system, theta, key, offset, K, num_windows):
    """One worker's truncated-BPTT windows computed directly: a Python loop over
    ``system.step`` (no unroll machinery), the incoming state a constant, a reset to
    ``system.init`` when the episode ends inside the window. Deterministic systems only
    (the key is reused for every episode).

    Every episode's ``init`` belongs to the window that runs its first step, so it is
    differentiated there (with ``K = T`` this makes windows exact, as full BPTT). A worker
    starts "between episodes" (``t = T``); one staggered by ``offset > 0`` steps has its
    episode's init and first steps in the past, held fixed."""
    T = system.horizon
    state, t = None, T
    for _ in range(offset):
        if t == T:
            state, t = system.init(theta, key), 0
        state, _ = system.step(theta, state, jnp.int32(t))
        t += 1
    out = []
    for _ in range(num_windows):

        def window_loss(theta, state=state, t=t):
            losses = []
            for _ in range(K):
                if t == T:
                    state, t = system.init(theta, key), 0
                state, loss = system.step(theta, state, jnp.int32(t))
                losses.append(loss)
                t += 1
            return jnp.mean(jnp.stack(losses)), (state, t)

        (loss, (state, t)), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
        out.append((grad, loss))
    return out


@pytest.mark.parametrize("problem", ["rnn", "rnn_learned_h0"])
def test_staggered_workers_rnn(problem):
    """With ``rnn_learned_h0`` the windows that cross an episode end also differentiate
    the new episode's ``init`` (the reference does too; only the incoming state is fixed)."""
    system, theta = PROBLEMS[problem]()  # T = 6
    W, K = 4, 4
    est = unroll.truncated_bptt(system, truncation=K, num_workers=W)
    init, estimate = jitted(est)
    state = init(theta, KEY)
    offsets = [(w * system.horizon) // W for w in range(W)]  # 0, 1, 3, 4
    np.testing.assert_array_equal(np.asarray(state.workers.t)[:, 0] % system.horizon, offsets)
    num_windows = 3
    refs = [reference_truncated_windows(system, theta, KEY, o, K, num_windows) for o in offsets]
    for i in range(num_windows):
        grad, state, info = estimate(theta, state, KEY)
        want = jax.tree_util.tree_map(lambda *g: sum(g) / W, *[r[i][0] for r in refs])
        assert tree_max_abs_diff(grad, want) < 1e-12
        np.testing.assert_allclose(info["loss"], np.mean([r[i][1] for r in refs]), rtol=1e-12)


# --------------------------------------------------------------------------- jit


def test_jit_matches_unjitted():
    """Eager and jitted runs agree (float64, to rounding: XLA may fuse sums differently).
    Staggered truncated BPTT (full BPTT's whole-episode windows: ``test_jit_matches_unjitted_full``)."""
    system, theta = rnn_problem()
    est = unroll.truncated_bptt(system, truncation=4, num_workers=3)
    state_a = est.init(theta, KEY)
    state_b = jax.jit(est.init)(theta, KEY)
    assert tree_max_abs_diff(state_a, state_b) <= 1e-14
    estimate = jax.jit(est.estimate)
    for i in range(2):
        key = jax.random.fold_in(KEY, i)
        g_a, state_a, info_a = est.estimate(theta, state_a, key)
        g_b, state_b, info_b = estimate(theta, state_b, key)
        assert tree_max_abs_diff(g_a, g_b) <= 1e-14
        assert tree_max_abs_diff(state_a, state_b) <= 1e-14
        assert tree_max_abs_diff(info_a, info_b) <= 1e-14


def test_jit_matches_unjitted_full():
    """The same for full BPTT, whose windows take the engine's aligned path."""
    system, theta = rnn_problem()
    est = unroll.full_bptt(system, num_workers=2)
    state_a = state_b = est.init(theta, KEY)
    estimate = jax.jit(est.estimate)
    for i in range(2):
        key = jax.random.fold_in(KEY, i)
        out_a, out_b = est.estimate(theta, state_a, key), estimate(theta, state_b, key)
        assert tree_max_abs_diff(out_a, out_b) <= 1e-14
        state_a, state_b = out_a.state, out_b.state


# --------------------------------------------------------------------------- whole-episode windows


@pytest.mark.parametrize(
    "make",
    [
        lambda system: unroll.full_bptt(system, num_workers=3),
        lambda system: unroll.truncated_bptt(system, truncation=system.horizon, num_workers=1),
    ],
    ids=["full_bptt", "truncated_bptt_K_eq_T"],
)
def test_whole_episode_windows_start_at_episode_ends(make):
    """The premise of the engine's aligned path: after ``init`` and after every window, each
    trajectory of a whole-episode estimator sits at its episode's end (``t == horizon``)."""
    system, theta = rnn_problem()
    init, estimate = jitted(make(system))
    state = init(theta, KEY)
    for i in range(3):
        assert np.all(np.asarray(state.workers.t) == system.horizon)
        _, state, _ = estimate(theta, state, jax.random.fold_in(KEY, i))
    assert np.all(np.asarray(state.workers.t) == system.horizon)


def noisy_sum_rule(system) -> Rule:
    """A rule with an accumulator and per-trajectory noise, to exercise every reset: the
    accumulator restarts with each episode at ``noise`` plus a draw from the episode's noise
    key, adds the step's loss, and the step contributes ``noise * loss * acc``."""

    def start(theta, key, noise_key, noise):
        return EpisodeStart(system.init(theta, key), noise + jax.random.normal(noise_key, (), noise.dtype))

    def step(theta, state, t, acc, noise):
        state, loss = system.step(theta, state, t)
        return Step(state, acc + loss, loss, noise * loss * acc)

    return Rule(start, step)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3)])
def test_aligned_windows_equal_scheduled_resets(shape):
    """``run_windows(..., aligned=True)``, the path of whole-episode windows (every trajectory
    starts its next episode before the scan; no reset inside it), against the general path
    (resets inside the scan, on a schedule), over consecutive windows on a system that draws
    noise from its keys: the same losses, contributions, states, keys, accumulators and
    gradient (float64; bit for bit in practice, asserted to 1e-12)."""
    system, theta = noisy_rnn_system(horizon=6), rnn_theta()
    rule = noisy_sum_rule(system)
    noise = jax.random.normal(jax.random.PRNGKey(7), shape, jnp.float64)
    workers, acc = start_workers(system, rule, theta, KEY, *shape, noise, stagger=False)

    def window(aligned):
        def objective(theta, workers, acc):
            result = run_windows(system, rule, theta, workers, acc, noise, system.horizon, aligned=aligned)
            return jnp.mean(result.losses) + jnp.sum(result.total), result

        return jax.jit(jax.value_and_grad(objective, has_aux=True))

    aligned, scheduled = window(True), window(False)
    for _ in range(3):
        (value, result), grad = aligned(theta, workers, acc)
        (want_value, want), want_grad = scheduled(theta, workers, acc)
        assert tree_max_abs_diff((value, grad), (want_value, want_grad)) <= 1e-12
        assert tree_max_abs_diff(result.workers.state, want.workers.state) <= 1e-12
        assert (
            tree_max_abs_diff((result.acc, result.total, result.losses), (want.acc, want.total, want.losses)) <= 1e-12
        )
        np.testing.assert_array_equal(result.workers.t, want.workers.t)
        np.testing.assert_array_equal(jax.random.key_data(result.workers.key), jax.random.key_data(want.workers.key))
        workers, acc = result.workers, result.acc
