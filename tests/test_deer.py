"""DEER and quasi-DEER: ``unroll.parallel.solve_recurrence`` / ``solve_episode`` and
``parallel_bptt(solver=...)``, in float64, against the sequential scan and ``full_bptt``.

The proofs: Newton on a chain is exact after at most ``T`` iterations from any guess (and
the first ``k`` states after ``k``); on contracting systems (tanh RNN, GRU, LSTM, a
learned-optimizer inner loop, a complex diagonal recurrence) the trajectory is the
sequential one and the gradient is ``full_bptt``'s to 1e-8; on chaotic ones (a gain-3 tanh
RNN, Lorenz-63) the solve misses the tolerance, says so, and the gradient is still exact
(the sequential fallback).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import diagonal_system, diagonal_theta, gain_theta, rnn_system, step_losses
from unroll import parallel, tasks

SOLVERS = parallel.SOLVERS  # deer, quasi-deer and the damped elk, quasi-elk
UNDAMPED = ("deer", "quasi-deer")  # the chain property holds for their full steps
KEY = jax.random.key(0)


def _leaves(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _relative(a, b) -> float:
    a, b = _leaves(a), _leaves(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _full_bptt_gradient(system, theta, num_workers=2):
    est = unroll.full_bptt(system, num_workers=num_workers)
    grad, _, info = jax.jit(est.estimate)(theta, est.init(theta, KEY), KEY)
    return grad, info


def _solver_gradient(system, theta, solver, num_workers=2, **settings):
    est = unroll.parallel_bptt(system, num_workers=num_workers, solver=solver, **settings)
    grad, state, info = jax.jit(est.estimate)(theta, est.init(theta, KEY), KEY)
    return grad, info


# --------------------------------------------------------------------------- the linear scan


@pytest.mark.parametrize("reverse", [False, True])
def test_matrix_recurrence_equals_the_loop(reverse):
    rng = np.random.default_rng(0)
    a, b, h0 = rng.normal(size=(9, 3, 3)) / 2, rng.normal(size=(9, 3)), rng.normal(size=3)
    h, expected = h0, []
    for t in reversed(range(9)) if reverse else range(9):
        h = a[t] @ h + b[t]
        expected.append(h)
    expected = np.stack(expected[::-1] if reverse else expected)
    np.testing.assert_allclose(parallel.matrix_recurrence(a, b, h0, reverse=reverse), expected, rtol=1e-12)


def test_matrix_recurrence_names_the_shapes_it_needs():
    with pytest.raises(ValueError, match=r"pass b \[T, n\] and a \[T, n, n\]"):
        parallel.matrix_recurrence(np.zeros((5, 3)), np.zeros((5, 3)))


# --------------------------------------------------------------------------- Newton on a chain


def _tanh_chain(gain: float, n: int = 8, horizon: int = 12, seed: int = 0):
    """``x_t = tanh(W x_{t-1} + u_t)``, ``rho(W) = gain``: its pieces and the sequential answer."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, n))
    w = jnp.asarray(gain * w / np.max(np.abs(np.linalg.eigvals(w))))
    u, x0 = jnp.asarray(rng.normal(size=(horizon, n))), jnp.asarray(rng.normal(size=n))
    fn = lambda x, u: jnp.tanh(w @ x + u)
    return fn, x0, u, parallel.sequential_recurrence(fn, x0, u)


@pytest.mark.parametrize("solver", UNDAMPED)
@pytest.mark.parametrize("gain", [0.5, 3.0])
def test_newton_is_exact_after_k_iterations_on_the_first_k_states(solver, gain):
    """From a random guess, ``k`` iterations make ``x_0..x_{k-1}`` exact, and ``T`` make all
    of them exact: also in the chaotic regime (gain 3), for either Jacobian."""
    fn, x0, u, exact = _tanh_chain(gain)
    horizon = u.shape[0]
    guess = 5.0 * jax.random.normal(jax.random.key(3), exact.shape, exact.dtype)
    for k in (1, 5, horizon):
        # the last iterate (solve_recurrence returns the best one, which may be earlier)
        loop = parallel._newton_loop(fn, x0, u, solver, guess, 1e-300, k, None)
        assert int(loop.iterations) == k
        np.testing.assert_allclose(loop.current.x[:k], exact[:k], atol=1e-12)
        if k < 4:
            assert np.max(np.abs(loop.current.x[k:] - exact[k:])) > 1e-3  # the rest is not solved yet
    solution = parallel.solve_recurrence(fn, x0, u, solver=solver, guess=guess, max_iterations=horizon)
    assert bool(solution.converged) and int(solution.iterations) <= horizon
    np.testing.assert_allclose(solution.trajectory, exact, atol=1e-12)


def test_solve_recurrence_refuses_an_unknown_solver():
    fn, x0, u, _ = _tanh_chain(0.5)
    with pytest.raises(ValueError, match="`solver` must be one of 'deer', 'quasi-deer'"):
        parallel.solve_recurrence(fn, x0, u, solver="newton")


# --------------------------------------------------------------------------- contracting systems


def _contracting(name: str):
    """``(system, theta)`` of a contracting system, float64."""
    if name == "tanh":
        return rnn_system(n=4, horizon=40), gain_theta(0.9, n=4)
    if name in ("gru", "lstm"):  # int target bits and a key in the state
        system, theta, _ = tasks.flip_flop(horizon=40, cell=name, hidden=4, dtype=jnp.float64, num_bits=2)
        return system, theta
    if name == "lopt":  # a learned optimizer's inner training loop (params, moments, key)
        system, theta, _ = tasks.lopt.learned_optimizer(problem="quadratic", horizon=30, hidden=8, dtype=jnp.float64)
        # off its SGD start (linear in the state: one Newton iteration), into the MLP's nonlinearity
        rng = np.random.default_rng(0)
        noisy = lambda x: x + 0.3 * (np.std(np.asarray(x)) + 0.1) * rng.normal(size=np.shape(x))
        return system, jax.tree_util.tree_map(noisy, theta)
    system = diagonal_system(horizon=30, complex_state=True)  # complex state, on its real view
    return system, diagonal_theta(complex_state=True)


CONTRACTING = ("tanh", "gru", "lstm", "lopt", "complex")


@functools.cache
def _reference(name: str):
    """``full_bptt``'s gradient and info on the named system (contracting or chaotic) and its
    losses stepped one Python call at a time: the references, computed once per system
    (each solver is checked against the same ones; the systems are deterministic builds)."""
    system, theta = _chaotic(name) if name in ("tanh-gain-3", "lorenz") else _contracting(name)
    losses = step_losses(system, theta, KEY, system.horizon)[1] if name in CONTRACTING else None
    return _full_bptt_gradient(system, theta), losses


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", CONTRACTING)
def test_the_trajectory_is_the_sequential_one(name, solver):
    system, theta = _contracting(name)
    solution = jax.jit(lambda th: parallel.solve_episode(system, th, KEY, solver=solver, max_iterations=100))(theta)
    assert bool(solution.converged), (name, solver, solution.iterations, solution.residual)
    losses = _reference(name)[1]
    np.testing.assert_allclose(solution.losses, losses, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", CONTRACTING)
def test_the_gradient_is_full_bptt(name, solver):
    """The implicit gradient at a tightly converged solution equals ``full_bptt``'s to 1e-8
    (same episodes: the same keys), with no fallback: except quasi-ELK on the learned optimizer,
    where one of the two episodes misses 1e-12 within 100 iterations (measured; quasi-DEER makes
    it) and is recomputed sequentially: the gradient is exact all the same."""
    system, theta = _contracting(name)
    exact, exact_info = _reference(name)[0]
    grad, info = _solver_gradient(system, theta, solver, tolerance=1e-12)
    if (name, solver) == ("lopt", "quasi-elk"):
        assert int(info["fallback"]) <= 1, info
    else:
        assert bool(info["converged"]) and int(info["fallback"]) == 0, info
    assert int(info.get("adjoint_fallback", 0)) == 0, info
    np.testing.assert_allclose(info["loss"], exact_info["loss"], rtol=1e-10)
    assert _relative(grad, exact) < 1e-8, (name, solver, _relative(grad, exact))


def test_quasi_deer_takes_more_iterations_than_deer():
    system, theta = _contracting("tanh")
    deer = parallel.solve_episode(system, theta, KEY, solver="deer")
    quasi = parallel.solve_episode(system, theta, KEY, solver="quasi-deer")
    assert bool(deer.converged) and bool(quasi.converged)
    assert int(quasi.iterations) > int(deer.iterations), (quasi.iterations, deer.iterations)
    np.testing.assert_allclose(quasi.states, deer.states, atol=1e-9)


def test_a_warm_start_from_the_previous_trajectories_needs_no_iteration():
    """The deterministic RNN's episodes are the same every call: from the last call's
    trajectories the solve is converged before its first iteration, and still exact."""
    system, theta = _contracting("tanh")
    est = unroll.parallel_bptt(system, num_workers=2, solver="deer", initial_guess="previous", tolerance=1e-12)
    estimate = jax.jit(est.estimate)
    state = est.init(theta, KEY)
    _, state, first = estimate(theta, state, KEY)
    grad, _, second = estimate(theta, state, KEY)
    assert int(first["iterations"]) > 0 and int(second["iterations"]) == 0, (first, second)
    assert _relative(grad, _reference("tanh")[0][0]) < 1e-8


# --------------------------------------------------------------------------- ELK: the damped step


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("variance", [1e-3, 0.5, 3.0, 1e8])
def test_the_damped_step_is_the_levenberg_marquardt_minimizer(diagonal, variance):
    """The Kalman smoother's step equals the least-squares solution of
    ``min sum_t |x_t - J_t x_{t-1} - u_t|^2 + |x - y|^2 / sigma^2``, solved densely (``lstsq``
    on the stacked system), for dense and diagonal ``J`` and damping from strong to none."""
    from unroll._kalman import smoother

    rng = np.random.default_rng(0)
    horizon, n = 7, 3
    jac = rng.normal(size=(horizon, n) if diagonal else (horizon, n, n))
    jac[0] = 0
    bias, observed = rng.normal(size=(horizon, n)), rng.normal(size=(horizon, n))
    gains, offsets = smoother(
        jnp.asarray(jac), jnp.asarray(bias), jnp.asarray(observed), jnp.asarray(variance), diagonal
    )
    step = parallel._affine(gains, offsets, None, diagonal, reverse=True)
    dense = np.stack([np.diag(j) for j in jac]) if diagonal else jac
    system = np.eye(horizon * n)
    for t in range(1, horizon):
        system[t * n : (t + 1) * n, (t - 1) * n : t * n] = -dense[t]
    stacked = np.vstack([system, np.eye(horizon * n) / np.sqrt(variance)])
    target = np.concatenate([bias.ravel(), observed.ravel() / np.sqrt(variance)])
    expected = np.linalg.lstsq(stacked, target, rcond=None)[0].reshape(horizon, n)
    np.testing.assert_allclose(step, expected, atol=1e-9 if variance > 1e6 else 1e-12)


def _driven_tanh(seed: int, n: int = 8, horizon: int = 200):
    """The driven, contracting tanh RNN where undamped Newton overflows (float32):
    ``x_t = tanh(W x_{t-1} + u_t)``, ``W ~ N(0, 16 / n)``, ``u_t ~ N(0, 9)``."""
    keys = jax.random.split(jax.random.key(seed), 2)
    w = jax.random.normal(keys[0], (n, n), jnp.float32) * 4 / np.sqrt(n)
    u = jax.random.normal(keys[1], (horizon, n), jnp.float32) * 3
    return (lambda x, u: jnp.tanh(w @ x + u)), jnp.zeros(n, jnp.float32), u


def test_elk_converges_where_deer_falls_back():
    """On the episodes (seeds 0 and 6 of 12 measured, T = 200, float32) where DEER's iterates
    overflow or miss the tolerance within the horizon's iterations (so ``parallel_bptt`` would fall
    back), ELK's damped steps stay finite and converge to the sequential trajectory. (Which
    episodes DEER misses moves with float32 rounding; at least one must, or the test proves nothing.)"""
    missed = 0
    with jax.enable_x64(False):
        for seed in (0, 6):
            fn, x0, u = _driven_tanh(seed)
            exact = parallel.sequential_recurrence(fn, x0, u)
            solve = lambda solver: jax.jit(
                lambda u: parallel.solve_recurrence(fn, x0, u, solver=solver, max_iterations=200)
            )(u)
            if bool(solve("deer").converged):
                continue
            missed += 1
            elk = solve("elk")
            assert bool(elk.converged), (seed, elk)
            np.testing.assert_allclose(elk.trajectory, exact, atol=1e-4)
    assert missed >= 1


def test_every_solver_returns_its_best_iterate():
    """Where DEER's last iterate overflowed, the solution is the best one seen (here the guess)."""
    with jax.enable_x64(False):
        fn, x0, u = _driven_tanh(0, horizon=1000)
        loop = parallel._newton_loop(fn, x0, u, "deer", None, None, 100, None)
        solution = parallel.solve_recurrence(fn, x0, u, solver="deer", max_iterations=100)
    assert not bool(jnp.isfinite(loop.current.residual))
    assert bool(jnp.isfinite(solution.residual)) and bool(jnp.all(jnp.isfinite(solution.trajectory)))
    assert float(solution.residual) == float(loop.best.residual)


# --------------------------------------------------------------------------- chaotic systems


def _chaotic(name: str):
    if name == "tanh-gain-3":
        # 60 steps (capped at 20 iterations below): the gradient grows like exp(lambda_1 T), and at T = 200 (about
        # 1e13) two exact float64 computations that differ in rounding order alone differed in sign
        return rnn_system(n=16, horizon=60), gain_theta(3.0, n=16)
    system, theta, _ = tasks.lorenz(horizon=1000, num_observed=3000, dtype=jnp.float64)
    return system, theta + 0.1


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["tanh-gain-3", "lorenz"])
def test_a_chaotic_system_falls_back_to_the_exact_sequential_gradient(name, solver):
    """Over long horizons the Newton solve misses the tolerance within the cap (100
    iterations); ``info`` says so (``converged`` False, every episode in ``fallback``) and
    the gradient is the exact one all the same."""
    system, theta = _chaotic(name)
    cap = 20 if name == "tanh-gain-3" else 100
    solution = jax.jit(lambda th: parallel.solve_episode(system, th, KEY, solver=solver, max_iterations=cap))(theta)
    assert not bool(solution.converged)
    grad, info = _solver_gradient(system, theta, solver, max_iterations=cap)
    assert not bool(info["converged"]) and int(info["fallback"]) == 2, info
    exact, _ = _reference(name)[0]
    assert _relative(grad, exact) < 1e-8, (name, solver, _relative(grad, exact))


# --------------------------------------------------------------------------- refusals and bad input


def _counting_system():
    """A state ``(x, count)`` whose int ``count`` grows when ``x[0] > 0``: it depends on the float."""
    base = rnn_system(n=3, horizon=5)

    def init(theta, key):
        return base.init(theta, key)[0], jnp.zeros((), jnp.int32)

    def step(theta, state, t):
        x, count = state
        (x,), loss = base.step(theta, (x,), t)
        return (x, count + (x[0] > 0).astype(jnp.int32)), loss

    return unroll.System(init, step, 5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_system_whose_int_leaves_read_its_floats_is_refused(solver):
    est = unroll.parallel_bptt(_counting_system(), solver=solver)
    with pytest.raises(ValueError, match=r"computes its discrete leaves from the float leaves state\[0\]") as err:
        est.init(gain_theta(0.5), KEY)
    assert "use full_bptt or checkpointed_bptt" in str(err.value)


@pytest.mark.parametrize(
    "settings, error, words",
    [
        ({"solver": "newton"}, ValueError, "`solver` must be None (the system's parallel form `episode`) or one of"),
        ({"solver": None, "tolerance": 1e-6}, ValueError, "`tolerance`=1e-06 is a setting of the Newton solvers"),
        ({"solver": None, "max_iterations": 5}, ValueError, "`max_iterations`=5 is a setting of the Newton solvers"),
        ({"solver": "deer", "tolerance": 0.0}, ValueError, "`tolerance` must be a positive finite float, got 0.0"),
        ({"solver": "deer", "tolerance": "tight"}, TypeError, "`tolerance` must be a positive float, got 'tight'"),
        ({"solver": "deer", "max_iterations": 0}, ValueError, "`max_iterations` must be a positive int, got 0"),
        ({"solver": "deer", "max_iterations": 2.5}, TypeError, "`max_iterations` must be a positive int, got 2.5"),
        ({"solver": "deer", "initial_guess": "ones"}, ValueError, "`initial_guess` must be 'zeros' or 'previous'"),
    ],
)
def test_bad_solver_settings_fail_at_construction(settings, error, words):
    with pytest.raises(error) as err:
        unroll.parallel_bptt(rnn_system(), **settings)
    assert words in str(err.value), str(err.value)
