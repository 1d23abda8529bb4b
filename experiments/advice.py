"""Study 7: does `unroll advise` recommend what wins? On five built-in tasks, at their default
settings, ``unroll advise TASK --verify`` (120 s of measurements, then a race of the top three
unflagged candidates under ``unroll compare --budget seconds=20``): the recommendation, the
race's winner, and whether they agree.

    python experiments/advice.py [--table-only]

Each task's ``advice.md``, ``advice.json``, plots and race (``verify/summary.json``,
``verify/curves.png``, ``verify/report.md``) are kept under
``experiments/results/advice/<task>/``.
"""

from __future__ import annotations

import json
import os
import shutil

from common import parse_args, publish, results_dir

from unroll import cli

STUDY = "advice"
TASKS = ("influence-balancing", "lr-schedule", "lorenz", "long-dependency", "flip-flop")
KEEP = ("advice.md", "advice.json", "lyapunov.png", "gradient_norm.png", "frontier.png")
KEEP_RACE = ("summary.json", "curves.png", "report.md")


def run(task: str, folder: str, progress: bool) -> None:
    """``unroll advise TASK --verify`` into a scratch folder; keeps its report, JSON, plots and race."""
    scratch = os.path.join(folder, "_run")
    shutil.rmtree(scratch, ignore_errors=True)
    argv = ["advise", task, "--verify", "--out", scratch] + ([] if progress else ["--no-progress"])
    if cli.main(argv) not in (0, 1):
        raise SystemExit(f"unroll {' '.join(argv)} failed")
    os.makedirs(os.path.join(folder, "verify"), exist_ok=True)
    for name in KEEP:
        shutil.copy(os.path.join(scratch, name), os.path.join(folder, name))
    for name in KEEP_RACE:
        shutil.copy(os.path.join(scratch, "verify", name), os.path.join(folder, "verify", name))
    shutil.rmtree(scratch)


def table() -> str:
    lines = [
        "| task | chaotic | reference (relative SE) | recommended | advise s | race: final objective (mean over seeds) "
        "| winner | agrees |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    agreed = 0
    for task in TASKS:
        with open(os.path.join(results_dir(STUDY), task, "advice.json")) as f:
            advice = json.load(f)
        race = advice["verification"]
        agreed += race["agrees"]
        objectives = ", ".join(f"{label} {value:.4g}" for label, value in race["objectives"].items())
        lines.append(
            f"| {task} (T = {advice['horizon']}) | {'yes' if advice['chaotic'] else 'no'} | {advice['reference']} "
            f"({advice['reference_error']:.2g}) | `{advice['recommendation']['label']}` | {advice['seconds']:.0f} | "
            f"{objectives} | `{race['winner']}` | {'yes' if race['agrees'] else 'no'} |"
        )
    lines += [
        "",
        f"The race's winner is the recommendation on {agreed} of {len(TASKS)} tasks. Each task's report, with every "
        "candidate's figures and verdict: `experiments/results/advice/<task>/advice.md`.",
        "",
        "Command: `python experiments/advice.py` (`unroll advise TASK --verify` per task), on 2 CPU cores.",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__)
    if not args.table_only:
        for task in TASKS:
            run(task, os.path.join(results_dir(STUDY), task), not args.no_progress)
    publish(STUDY, table())


if __name__ == "__main__":
    main()
