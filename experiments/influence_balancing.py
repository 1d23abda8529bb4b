"""Study 1: which estimators reach theta* on influence balancing (Vicol et al. 2021).

Expected (Vicol et al. 2021, Fig. 4): truncated BPTT with short truncations and
truncated ES drift away from the optimum (they see only the positive short-term
influence of theta); PES, like full BPTT, reaches it; so do RTRL (exact online)
and the other unbiased online estimators (NRES, forward gradients).

Runs `unroll compare influence-balancing` with its defaults, copies the outputs to
experiments/results/influence-balancing/, and rewrites the README's results section
between its markers from the summary (no hand-edited numbers).

    python experiments/influence_balancing.py [--seeds 3] [--steps 500]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from unroll.compare import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "influence-balancing")
MARKER = "influence-balancing"
EXPECTED = {
    "tbptt-1": "far from theta*", "tbptt-10": "far from theta*", "tbptt-100": "short of theta*",
    "tes": "far from theta*", "pes": "theta*", "nres": "theta*", "forward": "theta*", "rtrl": "theta*", "full-bptt": "theta*",
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
    lines += ["", f"Command: `{summary['command']}`, jax {summary['versions']['jax']} on {summary['versions']['device']}."]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        readme = f.read()
    start, end = f"<!-- results:{MARKER} -->", f"<!-- /results:{MARKER} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        sys.exit(f"README.md has no {start} ... {end} markers")
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: f"{start}\n{text}\n{end}", readme))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args()
    command = "python experiments/influence_balancing.py" + "".join(
        f" --{k} {v}" for k, v in (("seeds", args.seeds), ("steps", args.steps)) if v
    )
    out_dir, summary = compare("influence-balancing", seeds=args.seeds, steps=args.steps, command=command)
    os.makedirs(OUT, exist_ok=True)
    for name in ("summary.json", "curves.png"):
        shutil.copy(os.path.join(out_dir, name), os.path.join(OUT, name))
    text = table(summary)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    if not args.no_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
