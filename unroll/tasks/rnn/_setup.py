"""What the recurrent-network tasks share as CLI setups (``unroll compare TASK``): the
default estimators and the ``Task`` a setup returns."""

from __future__ import annotations

from unroll.task import Task, adam_cosine, standard_settings

DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "copy": ["tbptt-5", "full-bptt", "uoro", "dni-5", "pes", "forward"],
    "flip-flop": ["tbptt-10", "full-bptt", "uoro", "dni", "pes", "forward"],
    "char-lm": ["tbptt-16", "full-bptt", "dni-16", "uoro-16", "pes-16"],
    # the class is scored at the last step only: a window short of the horizon sees no
    # loss that depends on the first input
    "long-dependency": ["full-bptt", "parallel-bptt", "tbptt-10", "pes"],
}
"""The estimators ``unroll compare TASK`` runs when none are named, by task name."""


def network_setup(
    name: str,
    made,
    reference: dict,
    steps: int,
    truncation: int,
    *,
    cell: str,
    hidden: int,
    num_layers: int,
    learning_rate: float = 3e-3,
    sigma: float = 0.01,
    particles: int = 16,
    workers: int = 4,
) -> Task:
    """The ``Task`` called ``name`` of a network task's ``made = (system, theta, evaluate)``:
    Adam with a cosine schedule, the standard estimator settings, ``DEFAULT_ESTIMATORS[name]``,
    and the network's ``cell``, ``hidden``, ``num_layers`` and horizon added to ``reference``."""
    system, theta, evaluate = made
    return Task(
        name=name,
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference=dict(reference, cell=cell, hidden=hidden, num_layers=num_layers, horizon=system.horizon),
        settings=standard_settings(
            workers=workers, particles=particles, sigma=sigma, truncation=truncation, directions=4
        ),
        default_estimators=DEFAULT_ESTIMATORS[name],
        **adam_cosine(learning_rate),
        default_steps=steps,
        default_seeds=2,
    )
