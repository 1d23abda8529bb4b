"""``verify``: the race of an advice's top candidates under ``unroll.compare``, and whether its winner
is the recommendation."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from unroll import registry
from unroll._errors import BadValue
from unroll.advisor._report import Advice, Verification


class _Build(NamedTuple):
    """A row's estimator as a task's own build (``Task.estimators``), for the race of ``verify``."""

    name: str
    settings: dict

    def __call__(self, system, truncation=None):
        del truncation  # the row's settings hold its own
        return registry.get(self.name).constructor(system, **self.settings)


def verify(
    advice: Advice,
    *,
    seconds: float = 20.0,
    top: int = 3,
    seeds: int | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> Verification:
    """Races the `top` candidates of `advice` under `unroll.compare`, to check the recommendation.

    The `top` unflagged candidates (by expected progress per second) race at an equal budget of
    `seconds` of training each, on the same task; the result says whether the race's winner
    (lowest final objective, mean over seeds) is the recommendation.

    Args:
      advice: what ``advise`` returned.
      seconds: the training seconds each candidate gets (``budget="seconds=..."``).
      top: how many candidates race.
      seeds: seeds per candidate. Default: the task's.
      out_dir: the comparison's folder. Default: ``runs/<task>-verify-<time>``.
      progress: progress bars.

    Returns:
      A `Verification`.

    Raises:
      BadValue: the advice has no recommendation, or fewer than two candidates qualify.
    """
    import dataclasses

    from unroll.comparison import compare

    if advice.recommendation is None:
        raise BadValue("nothing to verify: the advice has no recommendation (see its reasons).")
    rows = [row for row in advice.rows if row.verdict in ("recommended", "ok")][:top]
    if len(rows) < 2:
        raise BadValue(
            f"nothing to race: only {len(rows)} candidate qualifies ({rows[0].label}); the race needs two or more."
        )
    task = advice.task
    builds = {row.label: _Build(row.name, row.settings) for row in rows}
    race = dataclasses.replace(task, estimators={**task.estimators, **builds}, default_estimators=list(builds))
    out_dir = out_dir or f"runs/{task.name}-verify-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, summary = compare(
        race, list(builds), budget=f"seconds={seconds:g}", seeds=seeds, out_dir=out_dir, progress=progress
    )
    objectives = {label: float(entry["final_objective"]["mean"]) for label, entry in summary["estimators"].items()}
    winner = min(objectives, key=lambda label: (not math.isfinite(objectives[label]), objectives[label]))
    agrees = winner == advice.recommendation.label
    listing = ", ".join(f"{label} {value:.4g}" for label, value in objectives.items())
    text = (
        f"Race ({seconds:g} s of training each, {len(summary['seeds'])} seeds; final objective, mean over seeds: "
        f"{listing}): the winner, {winner}, {'is' if agrees else 'is not'} the recommendation "
        f"({advice.recommendation.label})."
    )
    return Verification(tuple(builds), winner, objectives, agrees, folder, text)
