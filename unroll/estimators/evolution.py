"""Evolution strategies: full-episode ES, truncated ES, Persistent ES, noise-reuse ES.

All use ``eps ~ N(0, sigma^2 I)``, antithetic pairs ``(+eps, -eps)`` by default,
and ``g = 1/(N K sigma^2) sum_i sum_k xi_{i,k} l_{i,k}`` over the ``N`` particles and
``K`` window steps, averaged over workers. They differ in which noise perturbs a
step and which noise ``xi`` weighs its loss:

* ES: whole episodes at ``theta + eps_i``; ``xi = eps_i``.
* truncated ES: each window branches from an unperturbed state, ``xi = eps_i`` of the
  window; biased (the window's past is not perturbed).
* PES (Vicol et al. 2021): each particle keeps its own state; each window runs it with
  fresh ``eps_i`` and ``xi`` is the sum of all noise that touched the particle's
  current episode, this window's included. Unbiased.
* NRES (Li et al. 2023): ``eps_i`` drawn once per episode and reused in each of its
  windows, ``xi = eps_i``. Unbiased, lower variance than PES.

(GPES, between PES and NRES, is ``unroll.estimators.gpes``.) A step that ends an
episode is weighed with the old episode's ``xi``; the new episode's ``xi`` holds only
the noise that touched it (``unroll.contract``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll._constructor import keyword_only
from unroll._tree import normal_like, tree_add, tree_scale
from unroll.contract import EpisodeStart, Estimator, Rule, Step
from unroll.estimators._es import check_es, es_windowed, perturbed_rule


@keyword_only
def pes(
    system,
    *,
    truncation: int,
    sigma: float,
    num_particles: int,
    num_workers: int = 1,
    antithetic: bool = True,
    nonfinite: str = "stop",
) -> Estimator:
    """Persistent evolution strategies (Vicol et al. 2021), unbiased for the episode
    objective: ``g = 1/(N K sigma^2) sum_i xi_i sum_k l_{i,k}``, ``xi_i`` the sum of the
    noise of every window of particle ``i``'s current episode, this one's included.

    Staggered workers are advanced at ``init`` with the PES dynamics themselves (one
    first window of the stagger length), so their ``xi`` holds their whole episode.
    """
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    return es_windowed(system, perturbed_rule(system), settings)


@keyword_only
def es(
    system, *, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True, nonfinite: str = "stop"
) -> Estimator:
    """Evolution strategies over whole episodes: ``g = 1/(N sigma^2) sum_i eps_i L(theta + eps_i)``,
    an unbiased estimate of the gradient of the Gaussian-smoothed objective."""
    settings = check_es(system, system.horizon, sigma, num_particles, num_workers, antithetic, nonfinite)
    return es_windowed(system, perturbed_rule(system), settings, stagger=False)


@keyword_only
def truncated_es(
    system,
    *,
    truncation: int,
    sigma: float,
    num_particles: int,
    num_workers: int = 1,
    antithetic: bool = True,
    nonfinite: str = "stop",
) -> Estimator:
    """Truncated ES: every window, particles branch from the unperturbed worker state,
    run with fresh ``theta + eps_i``, and ``g = 1/(N K sigma^2) sum_i eps_i sum_k l_{i,k}``.
    The past of the window is not perturbed, so the estimate is biased."""
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    rule = perturbed_rule(system, begin=lambda _, eps: eps)  # xi: this window's noise only
    return es_windowed(system, rule, settings, branch=True)


@keyword_only
def nres(
    system,
    *,
    truncation: int,
    sigma: float,
    num_particles: int,
    num_workers: int = 1,
    antithetic: bool = True,
    nonfinite: str = "stop",
) -> Estimator:
    """Noise-reuse ES (Li et al. 2023): particle ``i`` draws ``eps_i`` when its episode
    starts and runs every window of the episode at ``theta + eps_i``;
    ``g = 1/(N K sigma^2) sum_i eps_i sum_k l_{i,k}``. Unbiased; over the windows of an
    aligned episode it sums to full ES with the same noise."""
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    num_particles, sigma = settings.num_particles, settings.sigma
    shape = (settings.num_workers, num_particles)
    half = num_particles // 2 if antithetic else num_particles
    index = jnp.arange(num_particles) % half
    sign = jnp.where(jnp.arange(num_particles) < half, 1.0, -1.0)
    pairing = (jnp.broadcast_to(index, shape), jnp.broadcast_to(sign, shape))

    def start(theta, key, noise_key, pair):
        index, sign = pair  # the pair's noise comes from the episode's noise key: antithetic partners agree
        eps = normal_like(jax.random.fold_in(noise_key, index), theta, (), sigma)
        eps = jax.tree_util.tree_map(lambda e: (sign * e).astype(e.dtype), eps)
        return EpisodeStart(system.init(tree_add(theta, eps), key), eps)

    def step(theta, state, t, eps, pair):
        state, loss = system.step(tree_add(theta, eps), state, t)
        return Step(state, eps, loss, tree_scale(loss, eps))

    return es_windowed(system, Rule(start, step), settings, noise=pairing)
