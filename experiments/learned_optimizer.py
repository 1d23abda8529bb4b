"""Study 4: meta-training a learned optimizer (per-parameter MLP) on MLP training on digits.

The learned optimizer starts as SGD (learning rate 0.1) and is meta-trained through inner
runs of 200 steps (a 64-32-10 MLP on scikit-learn's digits, a fresh init per episode); it is
scored on 16 held-out inner tasks (inits and minibatch streams not used for training)
against SGD and Adam with its learning rate tuned by grid search on those same tasks.

Expected (Metz et al. 2019; Vicol et al. 2021): PES's and ES's meta-loss curves descend
steadily; truncated BPTT (truncation 10) makes fast early progress but is biased toward
greedy, short-horizon behaviour; the meta-trained optimizer improves on its SGD start and
approaches or beats tuned Adam on this small inner problem.

    python experiments/learned_optimizer.py [--seeds 2] [--steps 300]
"""

from __future__ import annotations

from common import command_line, footer, mean_std, parse_args, publish, run_compare, summary_table

STUDY = "learned-optimizer"
ESTIMATORS = ["pes", "tbptt-10", "es", "full-bptt"]


def table(summary: dict) -> str:
    ref = summary["reference"]
    adam = ref["adam_tuned"]
    lines = [
        f"Learned optimizer on digits MLP training, inner horizon {ref['horizon']}; held-out meta-objective "
        f"(mean inner training loss): SGD start {ref['sgd_objective']:.4f}, tuned Adam {adam['objective']:.4f} "
        f"(log10 lr {ref['adam_best_log10_learning_rate']:.2f}, validation accuracy {adam['validation_accuracy']:.3f}); "
        f"{summary['outer_steps']} outer steps of {summary['optimizer']}; {len(summary['seeds'])} seeds.",
        "",
        summary_table(
            summary,
            [
                ("inner steps / outer step", lambda e: str(e["inner_steps_per_outer_step"])),
                ("held-out meta-objective", lambda e: mean_std(e, "final_objective")),
                ("vs tuned Adam", lambda e: f"{100 * (e['final_objective']['mean'] / adam['objective'] - 1):+.1f}%"),
                ("validation accuracy", lambda e: mean_std(e, "final_validation_accuracy", ".3f")),
                ("beats tuned Adam (every seed)", lambda e: "yes" if e.get("reached") else "no"),
                ("training time (s)", lambda e: f"{e['train_time_s']:.0f}"),
            ],
        ),
        "",
        footer(summary),
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__)
    summary = run_compare(STUDY, "lopt-digits", args, command_line("learned_optimizer.py", args), estimators=ESTIMATORS)
    publish(STUDY, table(summary), args)


if __name__ == "__main__":
    main()
