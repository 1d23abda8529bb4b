"""Matplotlib views of ``unroll.diagnostics`` results. Each function draws on ``ax`` (a new
figure when ``None``) and returns the axes, so notebooks can compose them."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_gradient_vs_horizon", "plot_jacobian_spectrum", "plot_loss_along", "plot_lyapunov"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def plot_lyapunov(spectrum, dt: float = 1.0, ax=None, label: str = "lambda"):
    """The running estimate of each exponent (per unit time: divided by ``dt``) against the
    measured steps: a flat tail means the estimate has converged."""
    ax = _axes(ax)
    running = np.asarray(spectrum.running) / dt
    steps = np.arange(1, running.shape[0] + 1)
    for i in range(running.shape[1]):
        ax.plot(steps, running[:, i], label=f"{label}_{i + 1} = {running[-1, i]:.4g}")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("measured steps")
    ax.set_ylabel("exponent" + (" per unit time" if dt != 1.0 else " per step"))
    ax.legend(fontsize=8)
    return ax


def plot_jacobian_spectrum(spectrum, ax=None):
    """The largest and smallest log singular values of the Jacobian products against time
    (their slopes are the extreme Lyapunov exponents)."""
    ax = _axes(ax)
    log_product = np.asarray(spectrum.log_product)
    steps = np.arange(1, log_product.shape[0] + 1)
    ax.plot(steps, log_product[:, 0], label="largest")
    ax.plot(steps, log_product[:, -1], label="smallest")
    ax.set_xlabel("steps")
    ax.set_ylabel("log singular value of d s_t / d s_0")
    ax.legend(fontsize=8)
    return ax


def plot_gradient_vs_horizon(result, ax=None, label: str = "exact (BPTT)", estimator_label: str = "estimator"):
    """Median gradient norm against the horizon (log-log), exact and, if measured, the
    estimator's."""
    ax = _axes(ax)
    horizons = np.asarray(result.horizons)
    ax.plot(horizons, np.asarray(result.exact_norm_median), "o-", label=label)
    if result.estimator_norm_median is not None:
        ax.plot(horizons, np.asarray(result.estimator_norm_median), "s--", label=estimator_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon")
    ax.set_ylabel("gradient norm (median)")
    ax.legend(fontsize=8)
    return ax


def plot_loss_along(horizons, offsets, losses, smoothed=None, ax=None):
    """Loss along a direction, one curve per horizon (solid), the ES-smoothed loss dashed."""
    ax = _axes(ax)
    for i, horizon in enumerate(horizons):
        (line,) = ax.plot(offsets, np.asarray(losses[i]), label=f"T = {horizon}")
        if smoothed is not None:
            ax.plot(offsets, np.asarray(smoothed[i]), "--", color=line.get_color())
    ax.set_xlabel("offset along the direction")
    ax.set_ylabel("mean episode loss" + (" (dashed: ES-smoothed)" if smoothed is not None else ""))
    ax.legend(fontsize=8)
    return ax
