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

FAMILIES = {
    "bptt": "backpropagation through time: exact or truncated, reverse mode",
    "forward": "forward-mode: the influence d state / d theta carried online",
    "synthetic": "truncated BPTT plus a learned synthetic gradient",
    "es": "evolution strategies: gradients from perturbed unrolls",
}


class Entry(NamedTuple):
    """One registered estimator."""

    name: str  # as `unroll compare` spells it (`tbptt-10` adds a truncation)
    constructor: Callable[..., Estimator]
    defaults: dict  # keyword arguments used where the caller's settings give none
    description: str
    family: str  # a key of FAMILIES

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

ESTIMATORS: dict[str, Entry] = {
    entry.name: entry
    for entry in [
        Entry("full-bptt", full_bptt, {}, "exact gradient of whole episodes", "bptt"),
        Entry("tbptt", truncated_bptt, _WINDOW, "truncated BPTT (biased)", "bptt"),
        Entry("parallel-bptt", parallel_bptt, {}, "exact gradient of whole episodes, in parallel over time "
              "(needs system.episode)", "bptt"),
        Entry("deer", parallel_bptt, {"solver": "deer"}, "exact gradient of whole episodes, in parallel over time "
              "by Newton iterations (dense Jacobians)", "bptt"),
        Entry("quasi-deer", parallel_bptt, {"solver": "quasi-deer"}, "as deer with diagonal Jacobians (more "
              "iterations, O(T n) memory)", "bptt"),
        Entry("checkpointed-bptt", checkpointed_bptt, {"memory_budget": 10},
              "full BPTT in memory_budget stored states", "bptt"),
        Entry("rtrl", rtrl, _WINDOW, "real-time recurrent learning (exact, online)", "forward"),
        Entry("snap", snap, {**_WINDOW, "order": 1}, "SnAp-1 (sparse RTRL, order 1)", "forward"),
        Entry("uoro", uoro, _WINDOW, "unbiased rank-one RTRL (high variance)", "forward"),
        Entry("forward", forward_gradient, {**_WINDOW, "num_directions": 10}, "forward gradient (unbiased)",
              "forward"),
        Entry("dni", dni, _WINDOW, "truncated BPTT + learned synthetic gradient", "synthetic"),
        Entry("es", es, {"sigma": 0.1, "num_particles": 100}, "ES over whole episodes", "es"),
        Entry("tes", truncated_es, _ES, "truncated ES (biased)", "es"),
        Entry("pes", pes, _ES, "persistent ES (unbiased)", "es"),
        Entry("nres", nres, _ES, "noise-reuse ES (unbiased)", "es"),
        Entry("gpes", gpes, {**_ES, "reuse": 2}, "generalized PES, noise redrawn every `reuse` windows (unbiased)",
              "es"),
    ]
}  # fmt: skip

SETTINGS = frozenset(name for entry in ESTIMATORS.values() for name in entry.parameters)


def get(name: str) -> Entry:
    """The entry called ``name``; a clear error naming the known ones otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)} (see `unroll list`).")
    return ESTIMATORS[name]


def build(name: str, system: Any, **settings) -> Estimator:
    """``get(name).constructor(system, **kwargs)``: the entry's defaults, overridden by the
    ``settings`` its constructor takes (the others are for other estimators)."""
    entry = get(name)
    unknown = sorted(set(settings) - SETTINGS)
    if unknown:
        raise ValueError(
            f"unknown estimator setting(s) {', '.join(unknown)}; registered estimators take {', '.join(sorted(SETTINGS))}."
        )
    return entry.constructor(system, **constructor_settings(name, **settings))


def constructor_settings(name: str, **settings) -> dict:
    """The keyword arguments ``build(name, system, **settings)`` passes to the constructor: the
    entry's defaults, overridden by the ``settings`` its constructor takes."""
    entry = get(name)
    return {**entry.defaults, **{key: value for key, value in settings.items() if key in entry.parameters}}
