"""Study 2: tuning SGD's learning-rate schedule through the whole run (horizon 200).

theta = (log10 lr0, log10 decay) of lr_t = lr0 / (1 + decay t), SGD with minibatches of
8 on an ill-conditioned linear regression (64 examples, 16 features whose curvatures
spread over a factor 1000, label noise 1); the meta-objective is the mean full-batch
training loss over the run. A grid search (36 x 21 points) gives the optimum.

Expected (Vicol et al. 2021; Wu et al. 2018 on short-horizon bias): PES, NRES and full ES
end within 2% of the grid optimum's objective, as does full BPTT here (the inner problem
is smooth and the horizon short enough not to explode); truncated BPTT and truncated ES
(truncation 10) optimize a greedy short-horizon objective (minibatch noise in the stiff
directions over the next few steps) and settle on a faster decay, short of the optimum.

Runs `unroll compare lr-schedule` with its defaults, keeps the outputs in
experiments/results/lr-schedule/ and writes its results.md from the summary.

    python experiments/lr_schedule.py [--seeds 2] [--steps 1000]
"""

from __future__ import annotations

from common import command_line, footer, parse_args, publish, run_compare

STUDY = "lr-schedule"
EXPECTED = {
    "tbptt-10": "biased (> 2%)",
    "tes": "biased (> 2%)",
    "pes": "within 2%",
    "nres": "within 2%",
    "es": "within 2%",
    "full-bptt": "within 2%",
}


def table(summary: dict) -> str:
    ref = summary["reference"]
    best = ref["grid_best_objective"]
    lines = [
        f"Learning-rate schedule, horizon {ref['horizon']}: grid optimum {best:.4f} at log10 lr0 = "
        f"{ref['grid_best_theta'][0]:.2f}, log10 decay = {ref['grid_best_theta'][1]:.2f} ({ref['grid']}); "
        f"theta_0 = (-2, -1); {summary['outer_steps']} outer steps of {summary['optimizer']}; "
        f"{len(summary['seeds'])} seeds.",
        "",
        "| estimator | inner steps / outer step | final log10 lr0 | final log10 decay | final objective | "
        "above grid optimum | expected | within 2% (every seed) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, e in summary["estimators"].items():
        objective = e["final_objective"]["mean"]
        lines.append(
            f"| {name} | {e['inner_steps_per_outer_step']} | {e['final_log10_lr0']['mean']:.2f} | "
            f"{e['final_log10_decay']['mean']:.2f} | {objective:.4f} ± {e['final_objective']['std']:.4f} | "
            f"{100 * (objective / best - 1):+.1f}% | {EXPECTED.get(name, '')} | {'yes' if e.get('reached') else 'no'} |"
        )
    return "\n".join(lines + ["", footer(summary)])


def main() -> None:
    args = parse_args(__doc__)
    summary = run_compare(STUDY, "lr-schedule", args, command_line("lr_schedule.py", args))
    publish(STUDY, table(summary))


if __name__ == "__main__":
    main()
