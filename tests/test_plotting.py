"""The plotting helpers draw exactly the diagnostics' numbers."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")

import unroll  # noqa: E402
from unroll import diagnostics, plotting  # noqa: E402

KEY = jax.random.key(0)


def linear_map(a):
    return unroll.System(
        lambda theta, key: jnp.ones(a.shape[0]), lambda theta, s, t: (jnp.asarray(a) @ s, 0.0 * s[0]), 1
    )


def test_lyapunov_and_jacobian_plots_carry_the_estimates():
    a = np.array([[0.9, 1.0], [0.0, 0.5]])
    spectrum = diagnostics.lyapunov_spectrum(linear_map(a), None, KEY, num_steps=40)
    ax = plotting.plot_lyapunov(spectrum, dt=0.5)
    curves = [line.get_ydata() for line in ax.get_lines()[:2]]
    np.testing.assert_allclose(curves[0], np.asarray(spectrum.running[:, 0]) / 0.5)
    np.testing.assert_allclose(curves[1], np.asarray(spectrum.running[:, 1]) / 0.5)
    jac = diagnostics.jacobian_spectrum(linear_map(a), None, KEY, num_steps=10)
    ax = plotting.plot_jacobian_spectrum(jac)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.asarray(jac.log_product[:, 0]))


def test_horizon_and_landscape_plots_carry_the_results():
    make = lambda h: unroll.System(lambda th, k: th, lambda th, s, t: (1.05 * s, 0.5 * s**2), h)
    result = diagnostics.gradient_vs_horizon(
        make, jnp.asarray(0.5), KEY, [2, 8], num_episodes=2, make_estimator=unroll.full_bptt, num_samples=2
    )
    ax = plotting.plot_gradient_vs_horizon(result)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.asarray(result.exact_norm_median))
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), np.asarray(result.estimator_norm_median))
    offsets = np.linspace(-1, 1, 3)
    losses, smoothed = diagnostics.loss_along(
        make, jnp.asarray(0.5), jnp.asarray(1.0), KEY, [2, 8], offsets, num_episodes=1, sigma=0.1, num_perturbations=4
    )
    ax = plotting.plot_loss_along([2, 8], offsets, losses, smoothed)
    assert len(ax.get_lines()) == 4
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), np.asarray(losses[1]))
    np.testing.assert_allclose(ax.get_lines()[3].get_ydata(), np.asarray(smoothed[1]))
