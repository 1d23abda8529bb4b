"""Study 5: Lorenz-63, gradient norm and loss against horizon for BPTT and ES.

At the task's initial parameters (8, 25, 2) and near the true ones (10, 28, 8/3) + 0.1,
for horizons 10 ... 1600 steps (dt = 0.01, so 0.1 ... 16 time units): the mean episode
loss, the norm of the exact (BPTT) gradient of each episode (median and max over 16
episodes), and the norm of the ES gradient (sigma 0.3, 200 antithetic particles, the same
episodes).

Expected (Metz et al. 2021, "Gradients are not all you need"): the BPTT gradient norm grows
exponentially with the horizon (the leading Lyapunov exponent of Lorenz-63 is about 0.9 per
time unit, so roughly e^(0.9 * dt * T)), while the ES gradient of the smoothed loss stays
bounded, of the order of the loss over sigma.

Uses ``unroll.diagnostics.gradient_vs_horizon``.

    python experiments/lorenz.py
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from common import parse_args, publish, results_dir

import unroll
from unroll import tasks
from unroll.diagnostics import gradient_vs_horizon

STUDY = "lorenz"
HORIZONS = (10, 25, 50, 100, 200, 400, 800, 1600)
NUM_EPISODES = 16


def measure(theta: jax.Array) -> list[dict]:
    """``unroll.diagnostics.gradient_vs_horizon`` at ``theta``: BPTT per episode, ES samples."""
    make_system = lambda h: tasks.lorenz(horizon=h, num_observed=max(5000, 2 * h), dtype=jnp.float64)[0]
    result = gradient_vs_horizon(
        make_system,
        theta,
        jax.random.key(0),
        HORIZONS,
        num_episodes=NUM_EPISODES,
        make_estimator=lambda system: unroll.es(system, sigma=0.3, num_particles=200),
        num_samples=NUM_EPISODES,
    )
    return [
        {
            "horizon": int(h),
            "loss": float(loss),
            "bptt_median": float(med),
            "bptt_max": float(mx),
            "es_median": float(es_med),
            "es_std": float(np.sqrt(es_var)),
        }
        for h, loss, med, mx, es_med, es_var in zip(
            result.horizons,
            result.loss,
            result.exact_norm_median,
            result.exact_norm_max,
            result.estimator_norm_median,
            result.estimator_variance,
        )
    ]


def plot(rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grad, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, data in rows.items():
        h = [r["horizon"] for r in data]
        (line,) = ax_grad.plot(h, [r["bptt_median"] for r in data], "o-", label=f"BPTT, {label}")
        ax_grad.plot(h, [r["es_median"] for r in data], "s--", color=line.get_color(), label=f"ES, {label}")
        ax_loss.plot(h, [r["loss"] for r in data], "o-", color=line.get_color(), label=label)
    for ax in (ax_grad, ax_loss):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("horizon (steps of dt = 0.01)")
        ax.legend(fontsize=8)
    ax_grad.set_ylabel("gradient norm (median over 16 episodes / ES samples)")
    ax_grad.set_title("Lorenz-63: BPTT explodes, ES stays bounded")
    ax_loss.set_ylabel("mean episode loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    parse_args(__doc__)  # --help, and the shared flags
    points = {"theta_0 = (8, 25, 2)": jnp.asarray([8.0, 25.0, 2.0]), "true + 0.1": jnp.asarray(tasks.TRUE_PARAMS) + 0.1}
    rows = {label: measure(theta) for label, theta in points.items()}
    out = results_dir(STUDY)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"command": "python experiments/lorenz.py", "jax": jax.__version__, "rows": rows}, f, indent=2)
    plot(rows, os.path.join(out, "gradient_vs_horizon.png"))
    lines = [
        "Lorenz-63 parameter estimation: norm of the gradient against the horizon, float64 "
        "(`unroll.diagnostics.gradient_vs_horizon`): exact BPTT of each of 16 episodes (median / max), and 16 "
        "ES estimates (sigma 0.3, 200 particles; median norm and the spread sqrt(mean |g - mean g|^2)).",
        "",
        "| theta | horizon | mean loss | BPTT grad norm (median / max over episodes) | ES grad norm (median; spread) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, data in rows.items():
        for r in data:
            lines.append(
                f"| {label} | {r['horizon']} | {r['loss']:.3g} | {r['bptt_median']:.3g} / {r['bptt_max']:.3g} "
                f"| {r['es_median']:.3g}; {r['es_std']:.3g} |"
            )
    growth = rows["true + 0.1"][-1]["bptt_median"] / rows["true + 0.1"][0]["bptt_median"]
    lines += [
        "",
        f"BPTT's gradient norm grows {growth:.3g}x from horizon {HORIZONS[0]} to {HORIZONS[-1]} "
        f"near the true parameters; ES's stays within "
        f"{min(r['es_median'] for d in rows.values() for r in d):.3g} to "
        f"{max(r['es_median'] for d in rows.values() for r in d):.3g}.",
        "",
        "Command: `python experiments/lorenz.py`, jax " + jax.__version__ + ".",
    ]
    publish(STUDY, "\n".join(lines))


if __name__ == "__main__":
    main()
