"""Every estimator, registered once: its name, constructor, defaults, description and
family. ``unroll compare``, ``unroll list``, the tests' shared fixtures and the
benchmarks all read this table, so an estimator registered here is covered everywhere.

``build(name, system, **settings)`` makes one: ``settings`` are shared settings
(``truncation``, ``sigma``, ``num_particles``, ``num_workers``, ``num_directions``,
``memory_budget``, ...), each passed to the estimators whose constructor takes it, on top
of the entry's ``defaults``. So one call site can build every estimator with the same
workers, particles and window length.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from unroll._errors import BadType, BadValue
from unroll.contract import Estimator
from unroll.estimators.bptt import full_bptt, truncated_bptt
from unroll.estimators.checkpointed import checkpointed_bptt
from unroll.estimators.dni import dni
from unroll.estimators.evolution import es, nres, pes, truncated_es
from unroll.estimators.forward_gradient import forward_gradient
from unroll.estimators.gpes import gpes
from unroll.estimators.parallel_bptt import parallel_bptt
from unroll.estimators.rtrl import rtrl, snap
from unroll.estimators.uoro import uoro

__all__ = [
    "ESTIMATORS",
    "Entry",
    "FAMILIES",
    "build",
    "constructor_settings",
    "get",
    "register",
    "setting_names",
    "unregister",
]


FAMILIES = {
    "bptt": "backpropagation through time: exact or truncated, reverse mode",
    "forward": "forward-mode: the influence d state / d theta carried online",
    "synthetic": "truncated BPTT plus a learned synthetic gradient",
    "es": "evolution strategies: gradients from perturbed unrolls",
}


class Entry(NamedTuple):
    """One registered estimator.

    Attributes:
      name: as `unroll compare` spells it (`tbptt-10` adds a truncation).
      constructor: `constructor(system, **kwargs) -> Estimator`.
      defaults: keyword arguments used where the caller's settings give none.
      description: a few words on what it computes.
      family: a key of `FAMILIES`.
      bias: whether its expected estimate is the gradient of the episode objective (the docs' table).
      proof: the test file(s) that prove it against a known answer (the docs' table).
    """

    name: str  # as `unroll compare` spells it (`tbptt-10` adds a truncation)
    constructor: Callable[..., Estimator]
    defaults: dict  # keyword arguments used where the caller's settings give none
    description: str
    family: str  # a key of FAMILIES
    bias: str = ""  # e.g. "exact", "unbiased", "biased (truncation)"
    proof: str = ""  # e.g. "tests/test_bptt.py (finite differences)"

    @property
    def parameters(self) -> tuple[str, ...]:
        """The keyword arguments the constructor takes (``system`` aside)."""
        return tuple(inspect.signature(self.constructor).parameters)[1:]

    @property
    def windowed(self) -> bool:
        """Whether it runs windows of ``truncation`` steps (else whole episodes)."""
        return "truncation" in self.parameters


_WINDOW = {"truncation": 10}
_ES = {"truncation": 10, "sigma": 0.1, "num_particles": 100}

_BPTT = "tests/test_bptt.py"
_ES_PROOF = "tests/test_evolution.py (many seeds)"

ESTIMATORS: dict[str, Entry] = {
    entry.name: entry
    for entry in [
        Entry("full-bptt", full_bptt, {}, "exact gradient of whole episodes", "bptt", "exact",
              f"{_BPTT} (finite differences)"),
        Entry("tbptt", truncated_bptt, _WINDOW, "truncated BPTT: the window's loss, incoming state held fixed",
              "bptt", "biased (truncation); exact at truncation = horizon", f"{_BPTT} (closed form)"),
        Entry("parallel-bptt", parallel_bptt, {}, "exact gradient of whole episodes, in parallel over time "
              "(needs system.episode)", "bptt", "exact", "tests/test_parallel.py, tests/test_cells.py (= full-bptt)"),
        Entry("deer", parallel_bptt, {"solver": "deer"}, "exact gradient of whole episodes, in parallel over time "
              "by Newton iterations (dense Jacobians)", "bptt", "exact", "tests/test_deer.py (= full-bptt)"),
        Entry("quasi-deer", parallel_bptt, {"solver": "quasi-deer"}, "as deer with diagonal Jacobians (more "
              "iterations, O(T n) memory)", "bptt", "exact", "tests/test_deer.py (= full-bptt)"),
        Entry("elk", parallel_bptt, {"solver": "elk"}, "as deer with each Newton step damped (Levenberg-Marquardt "
              "by a parallel Kalman smoother, a trust region), for systems where deer diverges", "bptt", "exact",
              "tests/test_deer.py (= full-bptt)"),
        Entry("quasi-elk", parallel_bptt, {"solver": "quasi-elk"}, "as elk with diagonal Jacobians", "bptt",
              "exact", "tests/test_deer.py (= full-bptt)"),
        Entry("checkpointed-bptt", checkpointed_bptt, {"memory_budget": 10},
              "full BPTT in memory_budget stored states, on the optimal binomial schedule", "bptt", "exact",
              "tests/test_checkpointing.py (= full-bptt)"),
        Entry("rtrl", rtrl, _WINDOW, "real-time recurrent learning: the influence d state / d theta carried online",
              "forward", "exact (an episode's windows average to full BPTT at a fixed theta)",
              "tests/test_rtrl.py (= full-bptt)"),
        Entry("snap", snap, {**_WINDOW, "order": 1}, "SnAp-1: RTRL keeping the influence entries reached within "
              "`order` steps", "forward", "exact for element-wise cells at order 1; biased otherwise",
              "tests/test_snap.py"),
        Entry("uoro", uoro, _WINDOW, "unbiased rank-one approximation of the influence (high variance)", "forward",
              "unbiased (real states)", "tests/test_uoro.py (many seeds)"),
        Entry("forward", forward_gradient, {**_WINDOW, "num_directions": 10}, "forward gradient: (grad . v) v by "
              "jvp carried online", "forward", "unbiased", "tests/test_forward.py (many seeds)"),
        Entry("dni", dni, _WINDOW, "truncated BPTT + a learned synthetic gradient at the window end", "synthetic",
              "biased (exact with an oracle synthesizer)", "tests/test_dni.py (oracle = full-bptt)"),
        Entry("es", es, {"sigma": 0.1, "num_particles": 100}, "ES over whole episodes", "es",
              "unbiased for the Gaussian-smoothed objective", _ES_PROOF),
        Entry("tes", truncated_es, _ES, "truncated ES: ES on each window alone", "es", "biased (truncation)",
              _ES_PROOF),
        Entry("pes", pes, _ES, "persistent ES (Vicol et al. 2021)", "es", "unbiased (smoothed objective)",
              _ES_PROOF),
        Entry("nres", nres, _ES, "noise-reuse ES (Li et al. 2023)", "es", "unbiased (smoothed objective)",
              _ES_PROOF),
        Entry("gpes", gpes, {**_ES, "reuse": 2}, "generalized PES: noise redrawn every `reuse` windows", "es",
              "unbiased (smoothed objective); variance between NRES's and PES's", "tests/test_gpes.py (many seeds)"),
    ]
}  # fmt: skip


def register(entry: Entry) -> Entry:
    """Adds an estimator to the registry: `unroll list`, `unroll compare`, `unroll advise`,
    the shared tests' fixtures and the docs' estimator table and API reference read it.

    Args:
      entry: the estimator's `Entry`; its name must be new and its family a key of `FAMILIES`.

    Returns:
      The entry.

    Raises:
      BadValue: a taken name, a name with a `-` followed by digits (that suffix is the
        truncation), or an unknown family.
      BadType: a constructor that is not callable or does not take `system` first.
    """
    if entry.name in ESTIMATORS:
        raise BadValue(f"an estimator named {entry.name!r} is registered already; choose another name.")
    if entry.name.rsplit("-", 1)[-1].isdigit():
        raise BadValue(f"estimator name {entry.name!r} ends in -DIGITS, which `unroll compare` reads as a truncation.")
    if entry.family not in FAMILIES:
        raise BadValue(f"`family`={entry.family!r} is not one of {', '.join(FAMILIES)}.")
    if not callable(entry.constructor) or not tuple(inspect.signature(entry.constructor).parameters)[:1] == ("system",):
        raise BadType(f"the constructor of {entry.name!r} must be a function constructor(system, **settings).")
    ESTIMATORS[entry.name] = entry
    return entry


def unregister(name: str) -> Entry:
    """Removes a registered estimator (e.g. one a test registered).

    Args:
      name: a registry name.

    Returns:
      The removed entry.
    """
    entry = get(name)
    del ESTIMATORS[name]
    return entry


def setting_names() -> frozenset[str]:
    """Every keyword argument some registered estimator's constructor takes (`system` aside).

    Returns:
      The names, e.g. `truncation`, `sigma`, `num_particles`, `num_workers`, ...
    """
    return frozenset(name for entry in ESTIMATORS.values() for name in entry.parameters)


def get(name: str) -> Entry:
    """The entry called `name`; a clear error naming the known ones otherwise.

    Args:
      name: a registry name (a key of `ESTIMATORS`, without `-K`).

    Returns:
      Its `Entry`.

    Raises:
      BadValue: an unknown name.
    """
    if name not in ESTIMATORS:
        raise BadValue(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)} (see `unroll list`).")
    return ESTIMATORS[name]


def build(name: str, system: Any, **settings) -> Estimator:
    """Builds estimator `name`: `get(name).constructor(system, **kwargs)`.

    The keyword arguments are the entry's defaults, overridden by the `settings` its constructor
    takes (the others are for other estimators; `constructor_settings`).

    Args:
      name: a registry name.
      system: the system to build it on.
      **settings: shared settings (`truncation`, `sigma`, `num_particles`, `num_workers`, `num_directions`,
        `memory_budget`, ...), each one a keyword argument of some registered estimator.

    Returns:
      The estimator.

    Raises:
      BadValue: an unknown name, or a setting no registered estimator takes.
    """
    entry = get(name)
    known = setting_names()
    unknown = sorted(set(settings) - known)
    if unknown:
        raise BadValue(
            f"unknown estimator setting(s) {', '.join(unknown)}; registered estimators take {', '.join(sorted(known))}."
        )
    return entry.constructor(system, **constructor_settings(name, **settings))


def constructor_settings(name: str, **settings) -> dict:
    """The keyword arguments `build(name, system, **settings)` passes to the constructor.

    Args:
      name: a registry name.
      **settings: shared settings; those the constructor does not take are dropped.

    Returns:
      The entry's defaults, overridden by the `settings` its constructor takes.
    """
    entry = get(name)
    return {**entry.defaults, **{key: value for key, value in settings.items() if key in entry.parameters}}
