"""The candidates: the registry's estimators in ``ORDER``, each at the task's settings and then the grid
around them (``list_candidates``), the names a caller passes (``parse_candidates``), and the rules that
rule one out before it is compiled (not applicable to the system; over the memory budget by its model)."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from unroll import registry
from unroll._errors import BadType, BadValue
from unroll.advisor._report import empty_row
from unroll.checkpointing import format_bytes
from unroll.diagnostics import outlook_from_exponent
from unroll.task import Task, memory_models

# the order candidates are measured in (the first pass: each at the task's settings); an estimator registered
# later and not named here comes after these, in the registry's order
ORDER = (
    "full-bptt",
    "parallel-bptt",
    "tbptt",
    "rtrl",
    "pes",
    "nres",
    "es",
    "uoro",
    "forward",
    "snap",
    "tes",
    "dni",
    "gpes",
    "deer",
    "quasi-deer",
    "checkpointed-bptt",
)


def _order() -> list[str]:
    return [name for name in ORDER if name in registry.ESTIMATORS] + [
        name for name in registry.ESTIMATORS if name not in ORDER
    ]


class Candidate(NamedTuple):
    """One estimator at one setting, to measure."""

    label: str
    name: str
    settings: dict  # constructor keyword arguments
    first_pass: bool


def parse_candidates(candidates, task: Task) -> list[tuple[str, int | None, bool]]:
    """``[(registry name, truncation or None, fixed)]``: ``fixed`` when the name carried ``-K``."""
    if candidates is None:
        return [(name, None, False) for name in _order()]
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise BadType(f"`candidates` must be a list of estimator names, e.g. ['pes', 'tbptt-10'], got {candidates!r}.")
    parsed = []
    for text in candidates:
        match = re.fullmatch(r"([a-z][a-z-]*?)(?:-(\d+))?", text)
        name = match.group(1) if match else text
        if not match or name not in registry.ESTIMATORS:
            raise BadValue(
                f"unknown candidate {text!r}; choose from {', '.join(registry.ESTIMATORS)} (add -K for a "
                "truncation, e.g. tbptt-10)."
            )
        truncation = match.group(2)
        if truncation is not None:
            if not registry.get(name).windowed:
                raise BadValue(f"candidate {text!r}: {name} takes no truncation; write {name!r}.")
            truncation = int(truncation)
            if not 1 <= truncation <= task.system.horizon:
                raise BadValue(
                    f"candidate {text!r}: truncation {truncation} must lie in [1, horizon={task.system.horizon}]."
                )
        parsed.append((name, truncation, truncation is not None))
    return parsed


def _label(name: str, settings: dict, task: Task) -> str:
    label = f"{name}-{settings['truncation']}" if "truncation" in settings else name
    base = registry.constructor_settings(name, **task.settings)
    extra = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in settings.items()
        if key not in ("truncation", "memory_budget") and base.get(key) != value
    ]
    return " ".join([label, *extra])


def _variants(name: str, truncation: int | None, fixed: bool, task: Task, chaotic: bool) -> list[tuple[dict, bool]]:
    """``[(overrides, first pass)]``: the task's settings, then the grid."""
    horizon = task.system.horizon
    entry = registry.get(name)
    base = {} if truncation is None else {"truncation": truncation}
    out = [(base, True)]
    if fixed:
        return out
    own = truncation if truncation is not None else task.settings["truncation"]
    task_truncation = task.settings["truncation"]
    if name == "tbptt":
        for k in dict.fromkeys((horizon // 10, horizon // 100)):
            if 1 <= k != own:
                out.append(({"truncation": k}, False))
    if name in ("pes", "nres") and horizon // 10 > task_truncation:
        out.append(({"truncation": horizon // 10}, False))
    if name in ("pes", "nres", "es") and entry.family == "es":
        particles = task.settings["num_particles"]
        quarter = max(2, (particles // 4) // 2 * 2)
        if quarter < particles:
            out.append(({"num_particles": quarter}, False))
        if not chaotic:
            out.append(({"sigma": task.settings["sigma"] / 4}, False))
    return out


def list_candidates(task: Task, parsed, chaotic: bool, exponent: float, budget: int, grid: bool = True):
    """The candidates to measure, in order (every first-pass one before the grid), and the rows of
    those that do not apply to this system."""
    system = task.system
    models = memory_models(system, task.theta, task.settings)
    first, around, rows, seen = [], [], [], set()
    for name, truncation, fixed in parsed:
        why = _not_applicable(name, system, exponent, models, budget)
        for overrides, first_pass in _variants(name, truncation, fixed or not grid, task, chaotic):
            settings = registry.constructor_settings(name, **{**task.settings, **overrides})
            label = _label(name, settings, task)
            if label in seen:
                continue
            seen.add(label)
            if why is not None:
                rows.append(empty_row(label, name, settings, "not applicable", why))
                break
            modelled = memory_models(system, task.theta, {**task.settings, **overrides})
            over = _over_model(name, modelled, budget)
            if over is not None:
                rows.append(empty_row(label, name, settings, "over budget", over, memory=modelled[name]))
                continue
            (first if first_pass else around).append(Candidate(label, name, settings, first_pass))
    return first + around, rows


def _over_model(name: str, models: dict, budget: int) -> str | None:
    """Why ``name`` is over the budget by ``estimator_memory``'s model alone (not compiled), or None."""
    if name in models and models[name] > budget and name != "checkpointed-bptt":
        what = "its influence matrix" if name in ("rtrl", "snap") else "it"
        return (
            f"{what} needs about {format_bytes(models[name])} (estimator_memory's model; not compiled), over the "
            f"memory budget of {format_bytes(budget)}"
        )
    return None


def _not_applicable(name: str, system, exponent: float, models: dict, budget: int) -> str | None:
    if name == "parallel-bptt" and getattr(system, "episode", None) is None:
        return "needs system.episode (the parallel form)"
    if name in ("deer", "quasi-deer"):
        outlook = outlook_from_exponent(exponent, system.horizon, name) if math.isfinite(exponent) else None
        if outlook is None or not outlook.expected_fast:
            return "parallel_outlook: " + (outlook.rule if outlook else "lambda_1 is not finite")
    return None
