"""What the evolution-strategies estimators share: the argument checks, the perturbed
rule and the gradient ``g = 1/(W P K sigma^2) sum_{w,p,k} xi_{w,p,k} l_{w,p,k}``."""

from __future__ import annotations

from typing import Any, NamedTuple

from unroll._tree import perturbations, tree_add, tree_scale
from unroll.system import check_particles, check_sigma
from unroll.window import EpisodeStart, Estimator, Rule, Step, check_window, summed, windowed


class ESSettings(NamedTuple):
    """The checked settings of an ES estimator."""

    truncation: int
    sigma: float
    num_particles: int
    num_workers: int
    antithetic: bool


def check_es(
    system: Any, truncation: Any, sigma: Any, num_particles: Any, num_workers: Any, antithetic: Any
) -> ESSettings:
    """The construction-time checks of an ES estimator (``truncation = horizon`` for
    whole episodes)."""
    truncation, num_workers = check_window(system, truncation, num_workers)
    return ESSettings(
        truncation, check_sigma(sigma), check_particles(num_particles, antithetic), num_workers, antithetic
    )


def window_noise(sigma: float, num_workers: int, num_particles: int, antithetic: bool):
    """``noise(theta, key)``: one window's ``eps ~ N(0, sigma^2 I)`` per particle, ``[W, P]``,
    in antithetic pairs if asked."""
    return lambda theta, key: perturbations(key, theta, num_workers, num_particles, sigma, antithetic)


def perturbed_rule(system, begin=lambda xi, eps: tree_add(xi, eps)) -> Rule:
    """Runs ``theta + eps`` (``eps`` = this window's noise); the loss is weighed by the
    accumulator ``xi``, which a new episode starts at ``eps``. By default a window adds its
    ``eps`` to ``xi`` as it begins (PES: the noise touches the current episode)."""

    def start(theta, key, noise_key, eps):
        return EpisodeStart(system.init(tree_add(theta, eps), key), eps)

    def step(theta, state, t, xi, eps):
        state, loss = system.step(tree_add(theta, eps), state, t)
        return Step(state, xi, loss, tree_scale(loss, xi))

    return Rule(start, step, begin)


def es_windowed(system, rule: Rule, settings: ESSettings, **options) -> Estimator:
    """``windowed`` with the ES gradient ``g = 1/(W P K sigma^2) sum xi l`` and, unless
    ``options`` give other ``noise``, fresh (antithetic) ``eps`` every window."""
    truncation, sigma, num_particles, num_workers, antithetic = settings
    options.setdefault("noise", window_noise(sigma, num_workers, num_particles, antithetic))
    return windowed(
        system,
        rule,
        truncation=truncation,
        num_workers=num_workers,
        num_particles=num_particles,
        gradient=summed(1.0 / sigma**2),
        **options,
    )
