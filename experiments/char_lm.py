"""Study 3: a character language model on Python's bundled help text.

An LSTM (hidden 64, embedding 16) reads windows of its training sequences (episode length
64 characters) and is scored on 64 fixed validation sequences of 256 characters. Every
estimator gets the same number of outer steps; the plot shows validation bits per
character against outer steps, inner steps and training time.

Expected: truncated BPTT (truncation 16) is the strong baseline per unit of time; DNI
matches or beats it at the same truncation (its synthetic gradient carries information
across window ends); UORO's and forward gradients' variance makes them slower per step;
PES with few particles is far noisier than the gradient-based estimators on this many
parameters (about 30k).

    python experiments/char_lm.py [--seeds 2] [--steps 3000]
"""

from __future__ import annotations

from common import command_line, footer, mean_std, parse_args, publish, run_compare, summary_table

STUDY = "char-lm"
ESTIMATORS = ["tbptt-16", "full-bptt", "dni-16", "uoro-16", "forward-16", "pes-16"]


def table(summary: dict) -> str:
    ref = summary["reference"]
    lines = [
        f"Character LM ({ref['cell']}, hidden {ref['hidden']}), episodes of {ref['horizon']} characters; "
        f"uniform prediction = {ref['uniform_bits_per_char']:.2f} bits/char; {summary['outer_steps']} outer steps "
        f"of {summary['optimizer']}; {len(summary['seeds'])} seeds.",
        "",
        summary_table(
            summary,
            [
                ("inner steps / outer step", lambda e: str(e["inner_steps_per_outer_step"])),
                ("validation bits/char (mean ± std)", lambda e: mean_std(e, "final_bits_per_char", ".3f")),
                ("training time (s)", lambda e: f"{e['train_time_s']:.0f}"),
            ],
        ),
    ]
    best = min(summary["estimators"].items(), key=lambda kv: kv[1]["final_bits_per_char"]["mean"])
    lines += [
        "",
        f"Lowest validation bits/char: {best[0]} ({best[1]['final_bits_per_char']['mean']:.3f}).",
        "",
        footer(summary),
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__)
    summary = run_compare(STUDY, "char-lm", args, command_line("char_lm.py", args), estimators=ESTIMATORS)
    publish(STUDY, table(summary))


if __name__ == "__main__":
    main()
