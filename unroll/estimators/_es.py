"""What the evolution-strategies estimators share: the argument checks, the perturbed
rule and the gradient ``g = 1/(W P K sigma^2) sum_{w,p,k} xi_{w,p,k} l_{w,p,k}``, with
``nonfinite="drop"`` without the trajectories that went non-finite (``dropping``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import check_window
from unroll._engine import trajectory_sum
from unroll._errors import BadValue
from unroll._system import check_particles, check_sigma, inexact_leaves
from unroll._tree import perturbations
from unroll.builder import summed, windowed
from unroll.contract import Estimator, Gradient, Rule, Window, WindowGradient

NONFINITE = ("stop", "drop")


class ESSettings(NamedTuple):
    """The checked settings of an ES estimator."""

    truncation: int
    sigma: float
    num_particles: int
    num_workers: int
    antithetic: bool
    nonfinite: str = "stop"


def check_es(
    system: Any,
    truncation: Any,
    sigma: Any,
    num_particles: Any,
    num_workers: Any,
    antithetic: Any,
    nonfinite: Any = "stop",
) -> ESSettings:
    """The construction-time checks of an ES estimator (``truncation = horizon`` for
    whole episodes)."""
    truncation, num_workers = check_window(system, truncation, num_workers)
    if nonfinite not in NONFINITE:
        raise BadValue(
            f"`nonfinite`={nonfinite!r} must be 'stop' (a non-finite loss makes the estimate non-finite, and "
            "unroll.train stops at the last finite theta) or 'drop' (diverging trajectories are left out of the "
            "estimate and restart); e.g. nonfinite='drop'."
        )
    return ESSettings(
        truncation, check_sigma(sigma), check_particles(num_particles, antithetic), num_workers, antithetic, nonfinite
    )


def _finite_rows(leaves: list, shape: tuple) -> jax.Array:
    """``[W, P]``: every entry of the trajectory's rows of ``leaves`` is finite."""
    finite = jnp.ones(shape, bool)
    for x in leaves:
        finite &= jnp.all(jnp.isfinite(x.reshape(shape + (-1,))), axis=-1)
    return finite


def dropping(scale: float, antithetic: bool, horizon: int) -> WindowGradient:
    """``summed(scale)`` without the trajectories whose window went non-finite (a loss, a
    contribution, or the state it ends in), and with antithetic sampling their partners
    too: ``g = scale / (n K) sum_{kept} total``, ``n`` the trajectories kept. A dropped
    trajectory's episode ends here (``t = horizon``), so it restarts, fresh noise and
    all, at the next window; ``info['dropped']`` counts them, ``info['loss']`` is the mean
    over the kept ones (NaN if none is). Branched (truncated ES), the particles are
    dropped and the unperturbed trajectory restarts only if its own state is not finite.

    Bias: the estimate is the ES estimate conditioned on staying finite. Where
    divergence does not depend on the noise, that is the unbiased estimate on fewer
    trajectories; where it does (large perturbations diverge), the directions that
    diverge are missing from the average, which estimates the gradient of the smoothed
    objective restricted to the perturbations that stay finite, a biased estimate of the
    unrestricted one (which is infinite there anyway)."""

    def gradient(window: Window, theta, shared) -> Gradient:
        result = window.run(theta)
        shape = result.losses.shape[:2]
        keep = _finite_rows([result.losses, *jax.tree_util.tree_leaves(result.total)], shape)
        workers = result.workers
        own = _finite_rows(inexact_leaves(workers.state), workers.t.shape)
        if workers.t.shape == shape:
            keep &= own
        if antithetic:
            half = shape[1] // 2
            pair = keep[:, :half] & keep[:, half:]
            keep = jnp.concatenate([pair, pair], axis=1)
        kept = jnp.sum(keep)
        steps = window.num_steps // (shape[0] * shape[1])  # K, per trajectory
        mask = lambda x: jnp.where(keep.reshape(shape + (1,) * (x.ndim - 2)), x, 0)
        grad = trajectory_sum(jax.tree_util.tree_map(mask, result.total), scale / (jnp.maximum(kept, 1) * steps))
        restart = ~keep if workers.t.shape == shape else ~own
        result = result._replace(workers=workers._replace(t=jnp.where(restart, horizon, workers.t)))
        loss = jnp.where(kept > 0, jnp.sum(mask(result.losses)) / jnp.maximum(kept * steps, 1), jnp.nan)
        return Gradient(grad, result, shared, {"loss": loss, "dropped": keep.size - kept})

    return gradient


def window_noise(sigma: float, num_workers: int, num_particles: int, antithetic: bool):
    """``noise(theta, key)``: one window's ``eps ~ N(0, sigma^2 I)`` per particle, ``[W, P]``,
    in antithetic pairs if asked."""
    return lambda theta, key: perturbations(key, theta, num_workers, num_particles, sigma, antithetic)


def es_windowed(system, rule: Rule, settings: ESSettings, **options) -> Estimator:
    """``windowed`` with the ES gradient ``g = 1/(W P K sigma^2) sum xi l`` and, unless
    ``options`` give other ``noise``, fresh (antithetic) ``eps`` every window."""
    truncation, sigma, num_particles, num_workers, antithetic, nonfinite = settings
    options.setdefault("noise", window_noise(sigma, num_workers, num_particles, antithetic))
    scale = 1.0 / sigma**2
    gradient = summed(scale) if nonfinite == "stop" else dropping(scale, antithetic, system.horizon)
    return windowed(
        system,
        rule,
        truncation=truncation,
        num_workers=num_workers,
        num_particles=num_particles,
        gradient=gradient,
        **options,
    )
