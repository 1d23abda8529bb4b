r"""The rank and the verdicts: a candidate's expected progress per call,
$\max(\cos, 0)^2\, \mathrm{snr} / (1 + \mathrm{snr})$ (``expected_progress``), the rows ordered by
it per second, the recommendation (the unflagged row of most progress per second; ``rank``), and the
sentences that say which rows are flagged and why, and what is recommended."""

from __future__ import annotations

import math

from jax.flatten_util import ravel_pytree

from unroll.advisor._report import AdviceRow, Recommendation
from unroll.advisor._thresholds import BIAS_TOLERANCE, GROWTH_FACTOR, bias_threshold
from unroll.checkpointing import format_bytes
from unroll.task import Task


def expected_progress(cosine: float, snr: float) -> float:
    """The expected progress per call of an estimate with this cosine and SNR against the reference."""
    return max(cosine, 0.0) ** 2 * _fraction(snr)


def rank(rows: list[AdviceRow], budget: int, task: Task) -> tuple[list[AdviceRow], Recommendation | None, list[str]]:
    """The rows by expected progress per second (measured first), the best marked ``"recommended"``; the
    recommendation (None where no row qualifies) and the verdicts' sentences."""
    rows = _ranked(rows)
    recommendation = None
    best = next((row for row in rows if row.verdict == "ok" and row.progress_per_second > 0), None)
    if best is not None:
        recommendation = Recommendation(best.name, best.settings, best.label)
        rows = [row._replace(verdict="recommended") if row is best else row for row in rows]
    return rows, recommendation, _verdict_reasons(rows, best, budget, task)


def _fraction(snr: float) -> float:
    """``snr / (1 + snr)``, 1 at an infinite SNR."""
    return 1.0 if math.isinf(snr) else snr / (1.0 + snr)


def _ranked(rows: list[AdviceRow]) -> list[AdviceRow]:
    def order(row):
        measured = math.isfinite(row.progress_per_second)
        return (not measured, -(row.progress_per_second if measured else 0.0), row.label)

    return sorted(rows, key=order)


def _verdict_reasons(rows: list[AdviceRow], best: AdviceRow | None, budget: int, task: Task) -> list[str]:
    threshold = bias_threshold(ravel_pytree(task.theta)[0].size)
    reasons = []
    for flag, rule in (
        ("biased", f"bias z > {threshold:.3g} and relative bias > {BIAS_TOLERANCE:g}"),
        ("exploding", f"exp(lambda_1 K) >= {GROWTH_FACTOR:g} over the steps K they differentiate through"),
        ("over budget", f"compiled memory over {format_bytes(budget)}"),
        ("non-finite", "estimates that are not finite"),
    ):
        marked = [row for row in rows if flag in row.verdict.split(", ")]
        if marked:
            detail = ", ".join(f"{row.label} ({row.note.split('; ')[0]})" for row in marked[:6])
            more = f" and {len(marked) - 6} more" if len(marked) > 6 else ""
            reasons.append(f"{flag.capitalize()} ({rule}): {detail}{more}.")
    if best is not None:
        others = [row for row in rows if row.verdict == "ok" and row is not best and row.progress_per_second > 0]
        runner = (
            f"; {best.progress_per_second / others[0].progress_per_second:.3g}x the runner-up {others[0].label} "
            f"({others[0].progress_per_second:.3g}/s)"
            if others
            else "; the only candidate that qualifies"
        )
        reasons.append(
            f"Recommended: {best.label}, the most expected progress per second among the unflagged candidates: "
            f"{best.progress_per_second:.3g}/s (cosine {best.cosine:.3f}, SNR per call {best.snr:.3g}, "
            f"{best.seconds:.3g} s and {best.system_steps} system steps per call, {format_bytes(best.memory)})"
            f"{runner}."
        )
        return reasons
    measured = [row for row in rows if math.isfinite(row.progress_per_second)]
    over = [row for row in rows if "over budget" in row.verdict.split(", ")]
    considered = [row for row in rows if row.verdict != "not applicable"]
    if over and len(over) == len(considered):
        smallest = min(over, key=lambda row: row.memory)
        reasons.append(
            f"No recommendation: no candidate fits the memory budget of {format_bytes(budget)}; the smallest, "
            f"{smallest.label}, needs {format_bytes(smallest.memory)}."
        )
    elif not measured:
        reasons.append("No recommendation: no candidate could be measured in the time given (see the table).")
    else:
        reasons.append(
            "No recommendation: every measured candidate is flagged (biased, exploding or over budget) or its mean "
            "does not point along the reference (cosine <= 0)."
        )
    return reasons
