"""Lyapunov exponents against known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from unroll import tasks
from unroll.diagnostics import jacobian_spectrum, lyapunov_spectrum

KEY = jax.random.key(0)


def map_system(f, state0, horizon=1):
    """A map ``s -> f(s)`` as a System (loss 0): the dynamics alone."""
    return unroll.System(lambda theta, key: jnp.asarray(state0), lambda theta, s, t: (f(theta, s), 0.0 * jnp.sum(s)), horizon)


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
    system = map_system(lambda theta, x: jnp.tanh(gain * w @ x), np.random.default_rng(1).normal(size=n).astype(np.float32))
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
    np.testing.assert_allclose(np.asarray(result.step), np.tile(np.linalg.svd(a, compute_uv=False), (30, 1)), rtol=1e-12)
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
