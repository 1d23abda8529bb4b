"""Lyapunov exponents against known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from unroll import tasks
from unroll.diagnostics import gradient_quality, jacobian_spectrum, lyapunov_spectrum, quality_table

KEY = jax.random.key(0)


def map_system(f, state0, horizon=1):
    """A map ``s -> f(s)`` as a System (loss 0): the dynamics alone."""
    return unroll.System(
        lambda theta, key: jnp.asarray(state0), lambda theta, s, t: (f(theta, s), 0.0 * jnp.sum(s)), horizon
    )


def test_logistic_map_exponent_is_ln2():
    system = map_system(lambda theta, x: 4.0 * x * (1.0 - x), 0.3141)
    result = jax.jit(lambda: lyapunov_spectrum(system, None, KEY, num_steps=200_000))()
    assert float(result.exponents[0]) == pytest.approx(np.log(2), abs=0.01)
    assert result.running.shape == (200_000, 1)


def test_non_normal_linear_map_gives_log_eigenvalues():
    """A = S diag(0.9, -0.6, 0.3) S^-1 with a far-from-orthogonal S: after the warm-up aligns
    the frame with the Schur vectors every R is the Schur form, exponents ln|eigenvalue|."""
    s = np.array([[1.0, 5.0, -3.0], [0.0, 1.0, 4.0], [0.5, 0.0, 1.0]])
    a = s @ np.diag([0.9, -0.6, 0.3]) @ np.linalg.inv(s)
    system = map_system(lambda theta, x: jnp.asarray(a) @ x, np.ones(3))
    result = lyapunov_spectrum(system, None, KEY, num_steps=50, warmup=400)
    np.testing.assert_allclose(np.asarray(result.exponents), np.log([0.9, 0.6, 0.3]), atol=1e-6)


def test_contracting_tanh_rnn_exponent_is_log_of_gain_times_spectral_radius():
    n, g = 100, 0.5
    w = np.random.default_rng(0).normal(size=(n, n)) / np.sqrt(n)
    system = map_system(lambda theta, x: jnp.tanh(g * jnp.asarray(w) @ x), np.random.default_rng(1).normal(size=n))
    result = jax.jit(lambda: lyapunov_spectrum(system, None, KEY, num_steps=4000, k=2, warmup=500))()
    expected = np.log(g * np.max(np.abs(np.linalg.eigvals(w))))
    assert float(result.exponents[0]) == pytest.approx(expected, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("gain, expected", [(2.0, 0.15), (3.0, 0.31)])
def test_chaotic_tanh_rnn_has_the_large_n_exponent(gain, expected):
    """x' = tanh(g W x), W_ij ~ N(0, 1/N), N = 2000: the leading exponent approaches 0.15
    (g = 2) and 0.31 (g = 3); finite N and time leave a few hundredths."""
    n = 2000
    w = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)) / np.sqrt(n), jnp.float32)
    system = map_system(
        lambda theta, x: jnp.tanh(gain * w @ x), np.random.default_rng(1).normal(size=n).astype(np.float32)
    )
    result = jax.jit(lambda: lyapunov_spectrum(system, None, KEY, num_steps=2000, k=1, warmup=300))()
    assert float(result.exponents[0]) == pytest.approx(expected, abs=0.04)


@pytest.mark.slow
def test_lorenz_spectrum_per_unit_time():
    """Lorenz-63 (10, 28, 8/3), RK4 with dt = 0.01: 0.906, 0 and -14.57 within 2% (the zero
    exponent within 2% of the spectrum's width)."""
    dt = 0.01
    params = jnp.asarray(tasks.TRUE_PARAMS)
    system = map_system(lambda theta, x: tasks.lorenz_rk4(params, x, dt), tasks.lorenz_trajectory(0)[0])
    result = jax.jit(lambda: lyapunov_spectrum(system, None, KEY, num_steps=200_000, warmup=1000))()
    exponents = np.asarray(result.exponents) / dt
    assert exponents[0] == pytest.approx(0.906, rel=0.02)
    assert abs(exponents[1]) < 0.02 * (0.906 + 14.57)
    assert exponents[2] == pytest.approx(-14.57, rel=0.02)


def test_bad_k_is_a_clear_error():
    system = map_system(lambda theta, x: 0.5 * x, np.ones(3))
    with pytest.raises(ValueError, match="k"):
        lyapunov_spectrum(system, None, KEY, num_steps=10, k=4)


def test_jacobian_spectrum_of_a_linear_map_is_the_svd_of_its_powers():
    a = np.array([[0.5, 3.0, 0.0], [0.0, 1.1, 0.2], [0.4, 0.0, 0.9]])
    system = map_system(lambda theta, x: jnp.asarray(a) @ x, np.ones(3))
    result = jacobian_spectrum(system, None, KEY, num_steps=30)
    np.testing.assert_allclose(
        np.asarray(result.step), np.tile(np.linalg.svd(a, compute_uv=False), (30, 1)), rtol=1e-12
    )
    for t in (0, 9, 29):
        expected = np.log(np.linalg.svd(np.linalg.matrix_power(a, t + 1), compute_uv=False))
        # the small singular values of A^t are known only to ~eps * cond(A^t) (both sides)
        np.testing.assert_allclose(np.asarray(result.log_product[t]), expected, rtol=1e-6)


def test_jacobian_spectrum_products_track_the_lyapunov_exponent():
    """On the logistic map the log of the product's singular value over t tends to ln 2."""
    system = map_system(lambda theta, x: 4.0 * x * (1.0 - x), 0.3141)
    result = jax.jit(lambda: jacobian_spectrum(system, None, KEY, num_steps=20_000))()
    assert float(result.log_product[-1, 0]) / 20_000 == pytest.approx(np.log(2), abs=0.02)
    assert np.all(np.isfinite(np.asarray(result.log_product)))


def test_gradient_quality_of_exact_estimators_has_zero_bias():
    """full_bptt and rtrl (windows covering whole episodes) on a dense RNN: the bias is at
    rounding level, every sample is the exact gradient (cosine 1, no variance)."""
    from tests.systems import rnn_system, rnn_theta

    system, theta = rnn_system(horizon=6), rnn_theta()
    exact = unroll.exact_gradient(system, theta, KEY)
    for est, windows in ((unroll.full_bptt(system), 1), (unroll.rtrl(system, truncation=3), 2)):
        quality = gradient_quality(est, theta, KEY, num_samples=8, exact=exact, windows_per_sample=windows)
        assert quality.bias_norm < 1e-10 and quality.variance < 1e-20
        assert quality.mean_cosine == pytest.approx(1.0, abs=1e-10) and quality.bias_z == 0.0  # rounding only


def test_gradient_quality_shows_truncation_bias_and_pes_unbiasedness():
    """On the linear-quadratic system with an episode-random target (closed-form exact
    gradient), truncated BPTT with truncation 1 is biased by many standard errors; PES is
    within 4 standard errors per component."""
    from tests.stochastic import THETA, exact, linear_quadratic

    system = linear_quadratic(horizon=6, target_noise=0.5)
    reference = exact(6)
    tbptt = gradient_quality(
        unroll.truncated_bptt(system, truncation=1, num_workers=6), THETA, KEY, 400, reference, windows_per_sample=6
    )
    assert tbptt.bias_z > 10 and tbptt.bias_norm > 0.1 * float(jnp.linalg.norm(reference))
    pes = gradient_quality(
        unroll.pes(system, truncation=2, sigma=0.1, num_particles=4, num_workers=3),
        THETA,
        KEY,
        2000,
        reference,
        windows_per_sample=3,
    )
    assert pes.bias_z < 4 and np.isfinite(pes.snr) and pes.variance > 0
    table = quality_table({"tbptt-1": tbptt, "pes": pes}).splitlines()
    assert len(table) == 4 and table[2].startswith("| tbptt-1 | ") and f"{pes.snr:.3g}" in table[3]


def geometric_system(lam, horizon):
    """``s_0 = theta``, ``s' = lam s``, ``l_t = 0.5 s_{t+1}^2``: the episode loss is
    ``c_T theta^2`` with ``c_T = (1/T) sum_{t=1..T} 0.5 lam^(2t)``, so ``dL/dtheta = 2 c_T theta``."""
    return unroll.System(lambda theta, key: theta, lambda theta, s, t: (lam * s, 0.5 * (lam * s) ** 2), horizon)


def geometric_constant(lam, horizon):
    return np.mean([0.5 * lam ** (2 * t) for t in range(1, horizon + 1)])


def test_gradient_vs_horizon_follows_the_closed_form():
    from unroll.diagnostics import gradient_vs_horizon

    lam, theta, horizons = 1.1, jnp.asarray(0.7), [1, 5, 20, 50]
    result = gradient_vs_horizon(
        lambda h: geometric_system(lam, h),
        theta,
        KEY,
        horizons,
        num_episodes=3,
        make_estimator=unroll.full_bptt,
        num_samples=2,
    )
    expected = [2 * geometric_constant(lam, h) * 0.7 for h in horizons]
    np.testing.assert_allclose(np.asarray(result.exact_norm_median), expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(result.estimator_norm_median), expected, rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(result.loss), [geometric_constant(lam, h) * 0.49 for h in horizons], rtol=1e-10
    )
    assert float(jnp.max(result.exact_variance)) < 1e-20 and float(jnp.max(result.estimator_variance)) < 1e-20


def test_loss_along_and_its_smoothed_version():
    """L(theta + a d) = c (theta + a d)^2; with antithetic draws the smoothed loss is that plus
    c sigma^2 mean(eps^2) exactly, the same shift at every offset."""
    from unroll.diagnostics import loss_along

    lam, horizons, offsets = 0.9, [3, 10], np.linspace(-1, 1, 5)
    losses, smoothed = loss_along(
        lambda h: geometric_system(lam, h),
        jnp.asarray(0.2),
        jnp.asarray(1.0),
        KEY,
        horizons,
        offsets,
        num_episodes=2,
        sigma=0.3,
        num_perturbations=64,
    )
    for i, h in enumerate(horizons):
        c = geometric_constant(lam, h)
        np.testing.assert_allclose(np.asarray(losses[i]), c * (0.2 + offsets) ** 2, rtol=1e-10)
        shift = np.asarray(smoothed[i] - losses[i])
        np.testing.assert_allclose(shift, shift[0], rtol=1e-9)
        assert shift[0] == pytest.approx(c * 0.09, rel=0.4)


@pytest.mark.parametrize("gain", [0.5, 0.9, 1.2, 3.0])
def test_parallel_outlook_forecasts_the_newton_iterations(gain):
    """The forecast ``c / |lambda_1|`` is within a factor 2 of the iterations DEER and
    quasi-DEER take on a driven tanh RNN where it says "fast", and where it says "not
    fast" (gain 3, chaotic, lambda_1 > 0; quasi-DEER from gain 1.2) the solve indeed misses
    the 100-iteration cap."""
    from tests.systems import gain_theta, rnn_system

    system, theta, key = rnn_system(n=16, horizon=1000), gain_theta(gain, n=16), jax.random.key(0)
    for solver in ("deer", "quasi-deer"):
        outlook = unroll.diagnostics.parallel_outlook(system, theta, key, solver=solver)
        solution = jax.jit(
            lambda th: unroll.parallel.solve_episode(system, th, key, solver=solver, max_iterations=100)
        )(theta)
        # the forecast agrees with the solve (quasi-DEER at gain 1.2: 104 forecast, over the cap)
        assert outlook.expected_fast == bool(solution.converged), (solver, outlook, solution.iterations)
        assert outlook.expected_fast == (gain < 2 if solver == "deer" else gain < 1), (solver, outlook)
        if outlook.expected_fast:
            assert outlook.expected_iterations / 2 <= int(solution.iterations) <= 2 * outlook.expected_iterations
        assert ("expected fast" if outlook.expected_fast else "not expected fast") in outlook.rule
        if gain < 2:  # contracting: from zeros the full step stays finite
            assert outlook.damping_needed is False and "no damping needed" in outlook.rule


def test_parallel_outlook_says_when_damping_is_needed():
    """On the driven tanh RNN where DEER's first step from zeros overflows (float32, T = 1000,
    ``tests/test_deer.py``), the outlook says damping is needed; ELK then converges."""
    with jax.enable_x64(False):
        n, horizon = 8, 1000
        keys = jax.random.split(jax.random.key(0), 2)
        w = jax.random.normal(keys[0], (n, n), jnp.float32) * 4 / np.sqrt(n)
        u = jax.random.normal(keys[1], (horizon, n), jnp.float32) * 3
        system = unroll.System(
            lambda theta, key: jnp.zeros(n, jnp.float32),
            lambda theta, x, t: (jnp.tanh(theta @ x + u[t]), jnp.sum(x**2)),
            horizon,
        )
        outlook = unroll.diagnostics.parallel_outlook(system, w, jax.random.key(1), solver="elk", num_steps=200)
    assert outlook.exponent < 0, outlook  # contracting along its trajectory
    assert outlook.damping_needed is True and "damping is needed" in outlook.rule, outlook


def test_parallel_outlook_names_its_solvers():
    with pytest.raises(
        ValueError, match="`solver` must be one of 'deer', 'quasi-deer', 'elk', 'quasi-elk', got 'newton'"
    ):
        unroll.diagnostics.parallel_outlook(
            unroll.tasks.influence_balancing(horizon=5), jnp.zeros(1), None, solver="newton"
        )
