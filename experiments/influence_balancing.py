"""Study 1: which estimators reach theta* on influence balancing (Vicol et al. 2021).

Expected (Vicol et al. 2021, Fig. 4): truncated BPTT with short truncations and
truncated ES drift away from the optimum (they see only the positive short-term
influence of theta); PES, like full BPTT, reaches it; so do RTRL (exact online)
and the other unbiased online estimators (NRES, forward gradients).

Runs `unroll compare influence-balancing` with its defaults, copies the outputs to
experiments/results/influence-balancing/, and writes its results.md (included by docs/results.md)
between its markers from the summary (no hand-edited numbers).

    python experiments/influence_balancing.py [--seeds 3] [--steps 500]
"""

from __future__ import annotations

from common import command_line, footer, parse_args, publish, run_compare

STUDY = "influence-balancing"
EXPECTED = {
    "tbptt-1": "far from theta*",
    "tbptt-10": "far from theta*",
    "tbptt-100": "short of theta*",
    "tes": "far from theta*",
    "pes": "theta*",
    "nres": "theta*",
    "forward": "theta*",
    "rtrl": "theta*",
    "full-bptt": "theta*",
}


def table(summary: dict) -> str:
    ref = summary["reference"]
    lines = [
        f"Influence balancing, horizon {ref['horizon']}: theta* = {ref['theta_star']:.4f} for this horizon "
        f"(steady state -1/6); theta_0 = 0.5; {summary['outer_steps']} outer steps of "
        f"{summary['optimizer']}; {len(summary['seeds'])} seeds.",
        "",
        "| estimator | inner steps / outer step | final theta (mean ± std) | L(theta) - L(theta*) | expected | reached theta* (±0.02) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, e in summary["estimators"].items():
        lines.append(
            f"| {name} | {e['inner_steps_per_outer_step']} | {e['final_theta']['mean']:.4f} ± {e['final_theta']['std']:.4f} "
            f"| {e['final_objective_gap']['mean']:.2e} | {EXPECTED.get(name, '')} | {'yes' if e.get('reached') else 'no'} |"
        )
    return "\n".join(lines + ["", footer(summary)])


def main() -> None:
    args = parse_args(__doc__)
    command = command_line("influence_balancing.py", args)
    summary = run_compare(STUDY, "influence-balancing", args, command)
    publish(STUDY, table(summary))


if __name__ == "__main__":
    main()
