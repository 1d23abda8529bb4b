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

A step that ends an episode is weighed with the old episode's ``xi``; the new
episode's ``xi`` holds only the noise that touched it (``unroll.window``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll.system import (
    check_against_theta,
    check_num_workers,
    check_particles,
    check_sigma,
    check_system,
    check_truncation,
)
from unroll.window import (
    Estimator,
    Rule,
    Worker,
    plain_rule,
    run_windows,
    start_workers,
    trajectory_sum,
    tree_add,
    tree_scale,
    window_info,
    worker_shape_check,
)


class PESState(NamedTuple):
    workers: Worker  # [num_workers, num_particles]
    xi: object  # theta-shaped, [num_workers, num_particles]: noise accumulated in the current episode


class TruncatedESState(NamedTuple):
    workers: Worker  # [num_workers, 1]: the unperturbed trajectories particles branch from


class NRESState(NamedTuple):
    workers: Worker  # [num_workers, num_particles]
    eps: object  # theta-shaped, [num_workers, num_particles]: each particle's episode noise


def normal_like(key: jax.Array, tree, shape: tuple = (), scale: float = 1.0):
    """``scale * N(0, I)`` with the structure and dtypes of ``tree``, leading ``shape`` axes
    (one draw for all leaves, split among them)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x in leaves]
    dtype = jnp.result_type(*leaves)
    flat = scale * jax.random.normal(key, shape + (sum(sizes),), dtype)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1) if len(leaves) > 1 else [flat]
    noise = [part.reshape(shape + jnp.shape(x)).astype(jnp.result_type(x)) for part, x in zip(parts, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noise)


def perturbations(key, theta, num_workers: int, num_particles: int, sigma: float, antithetic: bool):
    """Per-particle ``eps ~ N(0, sigma^2 I)`` with leading ``[W, P]`` axes; antithetic
    particles are ``[eps_1..eps_n, -eps_1..-eps_n]``."""
    half = num_particles // 2 if antithetic else num_particles
    eps = normal_like(key, theta, (num_workers, half), sigma)
    if antithetic:
        eps = jax.tree_util.tree_map(lambda e: jnp.concatenate([e, -e], axis=1), eps)
    return eps


def perturbed_rule(system) -> Rule:
    """Runs ``theta + eps`` (``eps`` = this window's noise); the loss is weighed by the
    accumulator ``xi``, which a new episode starts at ``eps``."""

    def start(theta, key, noise_key, eps):
        return system.init(tree_add(theta, eps), key), eps

    def step(theta, state, t, xi, eps):
        state, loss = system.step(tree_add(theta, eps), state, t)
        return state, xi, loss, tree_scale(loss, xi)

    return Rule(start, step)


def _es_gradient(total, sigma: float, num_steps: int):
    """``1/(W P K sigma^2) sum xi l`` from the per-trajectory sums ``total`` ``[W, P, ...]``."""
    return trajectory_sum(total, 1.0 / (num_steps * sigma**2))


def _check_es(system, truncation, sigma, num_particles, num_workers, antithetic):
    check_system(system)
    return (
        check_truncation(truncation, system.horizon),
        check_sigma(sigma),
        check_particles(num_particles, antithetic),
        check_num_workers(num_workers),
    )


def _persistent(system, truncation, sigma, num_particles, num_workers, antithetic, stagger) -> Estimator:
    rule = perturbed_rule(system)
    shape = (num_workers, num_particles)

    def init(theta, key):
        check_against_theta(system, theta, key)
        worker_key, noise_key = jax.random.split(key)
        eps = perturbations(noise_key, theta, *shape, sigma, antithetic)
        workers, xi = start_workers(system, rule, theta, worker_key, *shape, eps, stagger)
        return PESState(workers, xi)

    def estimate(theta, state, key):
        worker_shape_check(state.workers, *shape)
        eps = perturbations(key, theta, *shape, sigma, antithetic)
        xi = tree_add(state.xi, eps)  # this window's noise touches every particle's current episode
        workers, xi, total, losses = run_windows(system, rule, theta, state.workers, xi, eps, truncation)
        grad = _es_gradient(total, sigma, num_workers * num_particles * truncation)
        return grad, PESState(workers, xi), window_info(losses, num_workers * num_particles * truncation)

    return Estimator(init, estimate)


def pes(
    system, *, truncation: int, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True
) -> Estimator:
    """Persistent evolution strategies (Vicol et al. 2021), unbiased for the episode
    objective: ``g = 1/(N K sigma^2) sum_i xi_i sum_k l_{i,k}``, ``xi_i`` the sum of the
    noise of every window of particle ``i``'s current episode, this one's included.

    Staggered workers are advanced at ``init`` with the PES dynamics themselves (one
    first window of the stagger length), so their ``xi`` holds their whole episode.
    """
    truncation, sigma, num_particles, num_workers = _check_es(
        system, truncation, sigma, num_particles, num_workers, antithetic
    )
    return _persistent(system, truncation, sigma, num_particles, num_workers, antithetic, stagger=True)


def es(system, *, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True) -> Estimator:
    """Evolution strategies over whole episodes: ``g = 1/(N sigma^2) sum_i eps_i L(theta + eps_i)``,
    an unbiased estimate of the gradient of the Gaussian-smoothed objective."""
    _, sigma, num_particles, num_workers = _check_es(
        system, system.horizon, sigma, num_particles, num_workers, antithetic
    )
    return _persistent(system, system.horizon, sigma, num_particles, num_workers, antithetic, stagger=False)


def truncated_es(
    system, *, truncation: int, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True
) -> Estimator:
    """Truncated ES: every window, particles branch from the unperturbed worker state,
    run with fresh ``theta + eps_i``, and ``g = 1/(N K sigma^2) sum_i eps_i sum_k l_{i,k}``.
    The past of the window is not perturbed, so the estimate is biased."""
    truncation, sigma, num_particles, num_workers = _check_es(
        system, truncation, sigma, num_particles, num_workers, antithetic
    )
    rule, central = perturbed_rule(system), plain_rule(system)
    shape = (num_workers, num_particles)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, _ = start_workers(system, central, theta, key, num_workers, 1, None, stagger=True)
        return TruncatedESState(workers)

    def estimate(theta, state, key):
        worker_shape_check(state.workers, num_workers, 1)
        eps = perturbations(key, theta, *shape, sigma, antithetic)
        branches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, shape + x.shape[2:]), state.workers)
        _, _, total, losses = run_windows(system, rule, theta, branches, eps, eps, truncation)
        workers, _, _, _ = run_windows(system, central, theta, state.workers, (), None, truncation)
        grad = _es_gradient(total, sigma, num_workers * num_particles * truncation)
        steps = num_workers * (num_particles + 1) * truncation
        return grad, TruncatedESState(workers), window_info(losses, steps)

    return Estimator(init, estimate)


def nres(
    system, *, truncation: int, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True
) -> Estimator:
    """Noise-reuse ES (Li et al. 2023): particle ``i`` draws ``eps_i`` when its episode
    starts and runs every window of the episode at ``theta + eps_i``;
    ``g = 1/(N K sigma^2) sum_i eps_i sum_k l_{i,k}``. Unbiased; over the windows of an
    aligned episode it sums to full ES with the same noise."""
    truncation, sigma, num_particles, num_workers = _check_es(
        system, truncation, sigma, num_particles, num_workers, antithetic
    )
    shape = (num_workers, num_particles)
    half = num_particles // 2 if antithetic else num_particles
    index = jnp.arange(num_particles) % half
    sign = jnp.where(jnp.arange(num_particles) < half, 1.0, -1.0)
    pairing = (jnp.broadcast_to(index, shape), jnp.broadcast_to(sign, shape))

    def start(theta, key, noise_key, pair):
        index, sign = pair  # the pair's noise comes from the episode's noise key: antithetic partners agree
        eps = normal_like(jax.random.fold_in(noise_key, index), theta, (), sigma)
        eps = jax.tree_util.tree_map(lambda e: (sign * e).astype(e.dtype), eps)
        return system.init(tree_add(theta, eps), key), eps

    def step(theta, state, t, eps, pair):
        state, loss = system.step(tree_add(theta, eps), state, t)
        return state, eps, loss, tree_scale(loss, eps)

    rule = Rule(start, step)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, eps = start_workers(system, rule, theta, key, *shape, pairing, stagger=True)
        return NRESState(workers, eps)

    def estimate(theta, state, key):
        del key  # noise is drawn per episode from each worker's key chain
        worker_shape_check(state.workers, *shape)
        workers, eps, total, losses = run_windows(system, rule, theta, state.workers, state.eps, pairing, truncation)
        grad = _es_gradient(total, sigma, num_workers * num_particles * truncation)
        return grad, NRESState(workers, eps), window_info(losses, num_workers * num_particles * truncation)

    return Estimator(init, estimate)
