"""What ``unroll compare`` needs about a task (``TaskSetup``) and the pieces every task's
setup shares: the estimators' settings and the outer optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optax


class TaskSetup(NamedTuple):
    """Everything ``compare`` needs about a task."""

    system: Any
    theta: Any
    evaluate: Callable[[Any], dict]  # theta -> {"objective": ..., other scalar metrics}, jit-able
    reference: dict  # known answers (e.g. the optimum) and what the objective is, written to the summary
    settings: dict  # the estimators' shared settings (``unroll.registry.build``): workers, particles, ...
    default_estimators: list[str]
    optimizer: Callable[[int], optax.GradientTransformation]  # from the number of outer steps
    optimizer_description: str
    default_steps: int
    default_seeds: int
    # (final theta of one seed, its final metrics) -> reached the known answer? None: no known answer
    reached: Callable[[Any, dict], bool] | None = None
    # a task's own builds, ``name -> build(system, truncation) -> Estimator``, used instead of the
    # registry's for those names (e.g. a custom estimator, or one on another system)
    estimators: dict[str, Callable[[Any, int | None], Any]] = {}


def standard_settings(
    workers: int = 10,
    particles: int = 100,
    sigma: float = 0.1,
    truncation: int = 10,
    directions: int = 10,
    memory_budget: int = 10,
) -> dict:
    """The shared settings every registered estimator of a task is built with
    (``unroll.registry.build``): every estimator gets the same ``num_workers``, and every
    ES estimator the same particles per worker, so their rows are comparable."""
    return {
        "num_workers": workers,
        "num_particles": particles,
        "sigma": sigma,
        "truncation": truncation,
        "num_directions": directions,
        "memory_budget": memory_budget,
    }


def adam_cosine(learning_rate: float, clip: float | None = None) -> dict:
    """Adam with a cosine-decayed learning rate (to 1% over the outer steps), as TaskSetup
    fields; ``clip``: the meta-gradient's global norm is clipped to it first."""

    def optimizer(steps):
        adam = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))
        return adam if clip is None else optax.chain(optax.clip_by_global_norm(clip), adam)

    clipped = "" if clip is None else f" after clipping the gradient to global norm {clip:g}"
    return {
        "optimizer": optimizer,
        "optimizer_description": f"adam, learning rate {learning_rate:g} cosine-decayed to "
        f"{learning_rate / 100:g} over the outer steps{clipped}",
    }
