"""Matplotlib views of ``unroll.diagnostics`` results.

Each ``plot_*`` function but ``plot_curves`` and ``plot_advice`` draws on ``ax`` (a new figure
when ``None``) and returns the axes, so notebooks can compose them; ``plot_curves`` writes
``unroll compare``'s curves.png.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_advice",
    "plot_curves",
    "plot_gradient_vs_horizon",
    "plot_jacobian_spectrum",
    "plot_loss_along",
    "plot_lyapunov",
]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def plot_lyapunov(spectrum, dt: float = 1.0, ax=None, label: str = "lambda"):
    """The running estimate of each Lyapunov exponent against the measured steps (log scale).

    A flat tail means the estimate has converged.

    Args:
      spectrum: a `LyapunovSpectrum` (`unroll.diagnostics.lyapunov_spectrum`).
      dt: the time step: exponents are divided by it, per unit time (1: per step).
      ax: the matplotlib axes to draw on; `None`: a new figure.
      label: the legend's name of the exponents (`label_1`, `label_2`, ...).

    Returns:
      The axes.
    """
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
    r"""The largest and smallest log singular values of the Jacobian products against time.

    The products are $\partial s_t / \partial s_0$; their slopes are the extreme Lyapunov exponents.

    Args:
      spectrum: a `JacobianSpectrum` (`unroll.diagnostics.jacobian_spectrum`).
      ax: the matplotlib axes to draw on; `None`: a new figure.

    Returns:
      The axes.
    """
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
    """Median gradient norm against the horizon (log-log), exact and, if measured, the estimator's.

    Args:
      result: a `HorizonGradients` (`unroll.diagnostics.gradient_vs_horizon`).
      ax: the matplotlib axes to draw on; `None`: a new figure.
      label: the legend's name of the exact gradient.
      estimator_label: the legend's name of the estimator's.

    Returns:
      The axes.
    """
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
    """Loss along a direction, one curve per horizon (solid), the ES-smoothed loss dashed.

    Args:
      horizons: the horizons, as given to `unroll.diagnostics.loss_along`.
      offsets: the offsets along the direction, likewise.
      losses: `[len(horizons), len(offsets)]`, `loss_along`'s first result.
      smoothed: its second result, or `None` (no dashed curves).
      ax: the matplotlib axes to draw on; `None`: a new figure.

    Returns:
      The axes.
    """
    ax = _axes(ax)
    for i, horizon in enumerate(horizons):
        (line,) = ax.plot(offsets, np.asarray(losses[i]), label=f"T = {horizon}")
        if smoothed is not None:
            ax.plot(offsets, np.asarray(smoothed[i]), "--", color=line.get_color())
    ax.set_xlabel("offset along the direction")
    ax.set_ylabel("mean episode loss" + (" (dashed: ES-smoothed)" if smoothed is not None else ""))
    ax.legend(fontsize=8)
    return ax


def plot_curves(path: str, histories: dict, reference: dict, title: str) -> None:
    r"""`unroll compare`'s curves.png: the objective against outer steps, inner steps and training wall time.

    Where known, the gap to the optimum $L(\theta) - L(\theta^*)$ is drawn instead (log scale); each
    curve is the mean over seeds, with the min-max band. A scalar theta gets a fourth panel.

    Args:
      path: the image file to write.
      histories: `{estimator: unroll.train's history with num_seeds}` (`eval/objective` or `eval/gap`, and
        `eval_step`, `eval_time_s` and `steps`).
      reference: the task's reference answers (`theta_star` is drawn on the theta panel).
      title: the first panel's title.

    Returns:
      None; the figure is written to `path`.
    """
    # a Figure of its own, not pyplot's: no backend is chosen or switched (in a notebook, the
    # inline plots after a comparison still show), and nothing is left open
    from matplotlib.figure import Figure

    use_gap = all("eval/gap" in h for h in histories.values())
    show_theta = all("eval/theta" in h and h["eval/theta"].ndim == 2 for h in histories.values())
    fig = Figure(figsize=(5 * (3 + show_theta), 4.2))
    axes = fig.subplots(1, 3 + show_theta)
    for name, history in histories.items():
        y = np.maximum(history["eval/gap"], 1e-14) if use_gap else history["eval/objective"]
        steps = history["eval_step"]
        inner = np.concatenate([[0], np.cumsum(history["steps"][0])])[steps]
        xs = [steps, inner, history["eval_time_s"]]
        ys = [y, y, y]
        if show_theta:
            xs.append(steps)
            ys.append(history["eval/theta"])
        for ax, x, v in zip(axes, xs, ys):
            (line,) = ax.plot(x, v.mean(axis=0), label=name)
            ax.fill_between(x, v.min(axis=0), v.max(axis=0), color=line.get_color(), alpha=0.2)
    ylabel = "L(theta) - L(theta*)" if use_gap else "objective"
    for ax, xlabel in zip(axes, ["outer step", "inner steps (all workers and particles)", "training time (s)"]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if use_gap or np.all([np.all(h["eval/objective"] > 0) for h in histories.values()]):
            ax.set_yscale("log")
    axes[1].set_xscale("symlog", linthresh=1e3)
    axes[1].set_xlim(left=0)
    axes[0].set_title(f"{title}: {ylabel} (mean, min-max over seeds)")
    if show_theta:
        ax_theta = axes[3]
        if "theta_star" in reference:
            ax_theta.axhline(reference["theta_star"], color="k", ls="--", lw=1, label="theta* (horizon)")
        ax_theta.set_xlabel("outer step")
        ax_theta.set_ylabel("theta")
        ax_theta.set_yscale("symlog", linthresh=0.5)
    axes[-1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_advice(advice, out_dir: str) -> dict[str, str]:
    r"""`unroll advise`'s three plots, written to `out_dir`.

    The plots are `lyapunov.png` (each trajectory's running $\lambda_1$ estimate), `gradient_norm.png`
    (the exact gradient's median and max norm against the prefix length) and `frontier.png`
    (expected progress per second against compiled memory, one point per measured candidate,
    flagged ones hollow, the recommendation starred).

    Args:
      advice: an `unroll.Advice`.
      out_dir: the folder to write to (it must exist).

    Returns:
      `{caption: file name}`.
    """
    import os

    files = {}
    _plot_running_exponent(advice, os.path.join(out_dir, "lyapunov.png"))
    files["the running Lyapunov exponent"] = "lyapunov.png"
    _plot_gradient_norm(advice, os.path.join(out_dir, "gradient_norm.png"))
    files["the exact gradient's norm against the horizon"] = "gradient_norm.png"
    _plot_frontier(advice, os.path.join(out_dir, "frontier.png"))
    files["expected progress per second against memory"] = "frontier.png"
    return files


def _figure(figsize):
    """A new (pyplot-free) figure and its one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, ax, path: str) -> None:
    """The legend, the layout, and the figure written to ``path``."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_running_exponent(advice, path: str) -> None:
    r"""``plot_advice``'s lyapunov.png: each trajectory's running $\lambda_1$ and their mean."""
    fig, ax = _figure((6, 4))
    steps = np.arange(1, advice.running.shape[1] + 1)
    for i, running in enumerate(advice.running):
        ax.plot(steps, running, lw=0.8, color="C0", alpha=0.6, label="each trajectory" if i == 0 else None)
    ax.axhline(advice.exponent, color="C1", ls="--", label=f"mean {advice.exponent:+.4g} ± {advice.exponent_error:.2g}")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("measured steps")
    ax.set_ylabel("running lambda_1 (per step)")
    ax.set_title(f"{advice.task.name}: " + ("chaotic over its horizon" if advice.chaotic else "not chaotic"))
    _save(fig, ax, path)


def _plot_gradient_norm(advice, path: str) -> None:
    """``plot_advice``'s gradient_norm.png: the exact gradient's median and max norm per horizon."""
    fig, ax = _figure((6, 4))
    ax.plot(advice.horizons, advice.norm_median, "o-", label="median over episodes")
    ax.plot(advice.horizons, advice.norm_max, "s--", label="max over episodes")
    ax.set_xscale("log")
    if np.all(np.asarray(advice.norm_max) > 0):
        ax.set_yscale("log")
    ax.set_xlabel("steps h (the mean loss of an episode's first h)")
    ax.set_ylabel("exact gradient norm")
    ax.set_title("exploding" if advice.exploding else "not exploding")
    _save(fig, ax, path)


def _plot_frontier(advice, path: str) -> None:
    """``plot_advice``'s frontier.png: progress per second against memory, one point per candidate."""
    fig, ax = _figure((7, 4.5))
    rows = [r for r in advice.rows if np.isfinite(r.progress_per_second) and r.memory > 0]
    positive = [r.progress_per_second for r in rows if r.progress_per_second > 0]
    floor = min(positive) / 10 if positive else 1e-3  # progress 0 (cosine <= 0) is drawn here, as a triangle
    colors = {"bptt": "C0", "forward": "C1", "synthetic": "C2", "es": "C3"}
    for row in rows:
        flagged = row.verdict not in ("ok", "recommended")
        color = colors.get(row.family, "C4")
        y = row.progress_per_second if row.progress_per_second > 0 else floor
        marker = "*" if row.verdict == "recommended" else ("o" if row.progress_per_second > 0 else "v")
        ax.scatter(
            row.memory,
            y,
            s=160 if marker == "*" else 40,
            marker=marker,
            facecolors="none" if flagged else color,
            edgecolors=color,
        )
        ax.annotate(row.label, (row.memory, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for family, color in colors.items():
        if any(r.family == family for r in rows):
            ax.scatter([], [], color=color, s=30, label=f"{family} family")
    ax.axvline(advice.budget["memory_budget"], color="k", ls=":", lw=1, label="memory budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compiled memory (bytes)")
    ax.set_ylabel("expected progress per second")
    ax.set_title("candidates (hollow: flagged; star: recommended; triangle: no progress)")
    _save(fig, ax, path)
