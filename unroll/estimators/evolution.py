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

from typing import NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import keyword_only
from unroll._tree import PyTree, normal_like, tree_add, tree_scale
from unroll.contract import EpisodeStart, Estimator, Rule, Step
from unroll.estimators._es import check_es, es_windowed

__all__ = ["NRESState", "PESState", "es", "nres", "pes", "truncated_es"]


class PESState(NamedTuple):
    """The accumulator of one PES particle (and of ES's and truncated ES's)."""

    xi: PyTree  # theta's structure: the noise its losses are weighed by, the sum of the perturbations
    # that touched its current episode (ES: the episode's; truncated ES: this window's)


class NRESState(NamedTuple):
    """The accumulator of one NRES particle."""

    eps: PyTree  # theta's structure: the perturbation its episode drew when it began, reused in each window


def _perturbed_rule(system, begin=lambda acc, eps: PESState(tree_add(acc.xi, eps))) -> Rule:
    r"""Runs $\theta + \epsilon$ ($\epsilon$: this window's noise) and weighs the loss by the
    accumulator's $\xi$, which a new episode starts at $\epsilon$. By default a window adds its
    $\epsilon$ to $\xi$ as it begins (PES: the noise touches the current episode)."""

    def start(theta, key, noise_key, eps):
        return EpisodeStart(system.init(tree_add(theta, eps), key), PESState(eps))

    def step(theta, state, t, acc, eps):
        state, loss = system.step(tree_add(theta, eps), state, t)
        return Step(state, acc, loss, tree_scale(loss, acc.xi))

    return Rule(start, step, begin)


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
    r"""Persistent evolution strategies (Vicol et al. 2021), unbiased for the episode objective.

    Every particle keeps its own state across windows. Each window draws a fresh
    $\epsilon_i \sim \mathcal N(0, \sigma^2 I)$, runs particle $i$ at $\theta + \epsilon_i$
    (the fresh noise, not the sum), and weighs its window loss by $\xi_i$, the sum of the
    noise of every window of particle $i$'s current episode, this one's included:

    $$
    \xi_i \leftarrow \xi_i + \epsilon_i, \qquad
    g = \frac{1}{N K \sigma^2} \sum_{i=1}^{N} \xi_i \sum_{k<K} \ell_{i,k},
    $$

    averaged over workers. A step that ends an episode is weighed with the old episode's
    $\xi$; the new episode's $\xi$ holds only the noise that touched it
    (`unroll.contract`). Staggered workers are advanced at `init` with the PES dynamics
    themselves (one first window of the stagger length), so their $\xi$ holds their whole
    episode.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); one call of
            `estimate` takes $W N K$ system steps.
        sigma: $\sigma$, the standard deviation of the perturbations
            $\epsilon \sim \mathcal N(0, \sigma^2 I)$, in theta's units (a positive float,
            e.g. 0.1). The estimate is the gradient of the Gaussian-smoothed objective
            $L_\sigma(\theta) = \mathbb E_\epsilon L(\theta + \epsilon)$, within
            $O(\sigma^2)$ of $\nabla L$.
        num_particles: $N$, the perturbed trajectories per worker, antithetic pairs included
            (an even number when `antithetic=True`). The particles of a worker share its episode keys,
            so an antithetic pair sees the same data.
        num_workers: $W$, independent groups of particles, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        antithetic: draw the particles in pairs $(+\epsilon, -\epsilon)$ (default `True`;
            lowers the variance); `False` draws every particle's noise independently.
        nonfinite: what a non-finite loss does. `"stop"` (default): it makes the estimate
            non-finite, and `unroll.train` stops at the last finite theta. `"drop"`: the
            trajectories whose window went non-finite (a loss, a contribution, or the state
            it ends in), and with `antithetic` their partners, are left out of the average
            ($g$ over the $n$ kept trajectories) and restart with fresh noise at the next
            window; `info['dropped']` counts them. The estimate is then conditioned on
            staying finite: unbiased on fewer trajectories where divergence does not depend
            on the noise, biased (the diverging directions are missing) where it does.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        trajectories have leading axes $[W, N]$ and whose accumulators hold each particle's
        noise weight $\xi$; `info` has `loss` (the mean over the particles' steps), `steps`
        ($W N K$) and, with `nonfinite="drop"`, `dropped`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type (`antithetic` must be a bool).
        ValueError: a count or `sigma` is not positive, `truncation` is above `horizon`,
            `num_particles` is odd with `antithetic=True`, or `nonfinite` is not `"stop"` or
            `"drop"`.
    """
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    return es_windowed(system, _perturbed_rule(system), settings)


@keyword_only
def es(
    system, *, sigma: float, num_particles: int, num_workers: int = 1, antithetic: bool = True, nonfinite: str = "stop"
) -> Estimator:
    r"""Evolution strategies over whole episodes.

    Each call runs every particle through a whole episode at $\theta + \epsilon_i$,
    $\epsilon_i \sim \mathcal N(0, \sigma^2 I)$, and weighs its mean episode loss
    $L(\theta + \epsilon_i)$ by its noise:

    $$
    g = \frac{1}{N \sigma^2} \sum_{i=1}^{N} \epsilon_i\, L(\theta + \epsilon_i),
    $$

    averaged over workers: an unbiased estimate of the gradient of the Gaussian-smoothed
    objective $L_\sigma(\theta) = \mathbb E_\epsilon L(\theta + \epsilon)$. It needs a whole
    episode per update and no gradients of the system.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        sigma: $\sigma$, the standard deviation of the perturbations
            $\epsilon \sim \mathcal N(0, \sigma^2 I)$, in theta's units (a positive float,
            e.g. 0.1). The estimate is the gradient of the Gaussian-smoothed objective
            $L_\sigma(\theta) = \mathbb E_\epsilon L(\theta + \epsilon)$, within
            $O(\sigma^2)$ of $\nabla L$.
        num_particles: $N$, the perturbed trajectories per worker, antithetic pairs included
            (an even number when `antithetic=True`). The particles of a worker share its episode keys,
            so an antithetic pair sees the same data.
        num_workers: $W$, independent groups of particles, each running whole episodes (not
            staggered); the estimate is their mean. Default 1.
        antithetic: draw the particles in pairs $(+\epsilon, -\epsilon)$ (default `True`;
            lowers the variance); `False` draws every particle's noise independently.
        nonfinite: what a non-finite loss does. `"stop"` (default): it makes the estimate
            non-finite, and `unroll.train` stops at the last finite theta. `"drop"`: the
            trajectories whose window went non-finite (a loss, a contribution, or the state
            it ends in), and with `antithetic` their partners, are left out of the average
            ($g$ over the $n$ kept trajectories) and restart with fresh noise at the next
            window; `info['dropped']` counts them. The estimate is then conditioned on
            staying finite: unbiased on fewer trajectories where divergence does not depend
            on the noise, biased (the diverging directions are missing) where it does.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        trajectories have leading axes $[W, N]$ and whose accumulators hold each particle's
        noise weight $\xi$; `info` has `loss` (the mean over the particles' steps), `steps`
        ($W N T$) and, with `nonfinite="drop"`, `dropped`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type (`antithetic` must be a bool).
        ValueError: a count or `sigma` is not positive, `num_particles` is odd with
            `antithetic=True`, or `nonfinite` is not `"stop"` or `"drop"`.
    """
    settings = check_es(system, system.horizon, sigma, num_particles, num_workers, antithetic, nonfinite)
    return es_windowed(system, _perturbed_rule(system), settings, stagger=False)


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
    r"""Truncated ES: each window's particles branch from the unperturbed worker state.

    Every window, the particles branch from the unperturbed worker state, run the window
    at fresh $\theta + \epsilon_i$, $\epsilon_i \sim \mathcal N(0, \sigma^2 I)$, and

    $$
    g = \frac{1}{N K \sigma^2} \sum_{i=1}^{N} \epsilon_i \sum_{k<K} \ell_{i,k},
    $$

    averaged over workers; the unperturbed state then moves on with the system's own
    dynamics. The past of the window is not perturbed, so the estimate is biased (toward
    short-term effects, like truncated BPTT); PES corrects it.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); one call of
            `estimate` takes $W (N + 1) K$ system steps.
        sigma: $\sigma$, the standard deviation of the perturbations
            $\epsilon \sim \mathcal N(0, \sigma^2 I)$, in theta's units (a positive float,
            e.g. 0.1). The estimate is the gradient of the Gaussian-smoothed objective
            $L_\sigma(\theta) = \mathbb E_\epsilon L(\theta + \epsilon)$, within
            $O(\sigma^2)$ of $\nabla L$.
        num_particles: $N$, the perturbed trajectories per worker, antithetic pairs included
            (an even number when `antithetic=True`). The particles of a worker share its episode keys,
            so an antithetic pair sees the same data.
        num_workers: $W$, independent groups of particles, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        antithetic: draw the particles in pairs $(+\epsilon, -\epsilon)$ (default `True`;
            lowers the variance); `False` draws every particle's noise independently.
        nonfinite: what a non-finite loss does. `"stop"` (default): it makes the estimate
            non-finite, and `unroll.train` stops at the last finite theta. `"drop"`: the
            trajectories whose window went non-finite (a loss, a contribution, or the state
            it ends in), and with `antithetic` their partners, are left out of the average
            ($g$ over the $n$ kept trajectories) and restart with fresh noise at the next
            window; `info['dropped']` counts them. The estimate is then conditioned on
            staying finite: unbiased on fewer trajectories where divergence does not depend
            on the noise, biased (the diverging directions are missing) where it does.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` holding
        the $[W, 1]$ unperturbed trajectories (the particles live within a window only);
        `info` has `loss` (the mean over the particles' steps), `steps`
        ($W (N + 1) K$: the particles' and the unperturbed trajectories') and, with
        `nonfinite="drop"`, `dropped`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type (`antithetic` must be a bool).
        ValueError: a count or `sigma` is not positive, `truncation` is above `horizon`,
            `num_particles` is odd with `antithetic=True`, or `nonfinite` is not `"stop"` or
            `"drop"`.
    """
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    rule = _perturbed_rule(system, begin=lambda _, eps: PESState(eps))  # xi: this window's noise only
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
    r"""Noise-reuse ES (Li et al. 2023): one perturbation per episode, reused in each window.

    Particle $i$ draws $\epsilon_i \sim \mathcal N(0, \sigma^2 I)$ when its episode starts
    and runs every window of the episode at $\theta + \epsilon_i$:

    $$
    g = \frac{1}{N K \sigma^2} \sum_{i=1}^{N} \epsilon_i \sum_{k<K} \ell_{i,k},
    $$

    averaged over workers. Unbiased, with lower variance than PES; over the windows of an
    aligned episode it sums to full ES with the same noise. A step that ends an episode is
    weighed with the old episode's $\epsilon_i$. Antithetic partners share their episode's
    noise key, so they stay paired across episodes.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); one call of
            `estimate` takes $W N K$ system steps.
        sigma: $\sigma$, the standard deviation of the perturbations
            $\epsilon \sim \mathcal N(0, \sigma^2 I)$, in theta's units (a positive float,
            e.g. 0.1). The estimate is the gradient of the Gaussian-smoothed objective
            $L_\sigma(\theta) = \mathbb E_\epsilon L(\theta + \epsilon)$, within
            $O(\sigma^2)$ of $\nabla L$.
        num_particles: $N$, the perturbed trajectories per worker, antithetic pairs included
            (an even number when `antithetic=True`). The particles of a worker share its episode keys,
            so an antithetic pair sees the same data.
        num_workers: $W$, independent groups of particles, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        antithetic: draw the particles in pairs $(+\epsilon, -\epsilon)$ (default `True`;
            lowers the variance); `False` draws every particle's noise independently.
        nonfinite: what a non-finite loss does. `"stop"` (default): it makes the estimate
            non-finite, and `unroll.train` stops at the last finite theta. `"drop"`: the
            trajectories whose window went non-finite (a loss, a contribution, or the state
            it ends in), and with `antithetic` their partners, are left out of the average
            ($g$ over the $n$ kept trajectories) and restart with fresh noise at the next
            window; `info['dropped']` counts them. The estimate is then conditioned on
            staying finite: unbiased on fewer trajectories where divergence does not depend
            on the noise, biased (the diverging directions are missing) where it does.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        trajectories have leading axes $[W, N]$ and whose accumulators hold each particle's
        noise weight $\xi$; `info` has `loss` (the mean over the particles' steps), `steps`
        ($W N K$) and, with `nonfinite="drop"`, `dropped`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type (`antithetic` must be a bool).
        ValueError: a count or `sigma` is not positive, `truncation` is above `horizon`,
            `num_particles` is odd with `antithetic=True`, or `nonfinite` is not `"stop"` or
            `"drop"`.
    """
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
        return EpisodeStart(system.init(tree_add(theta, eps), key), NRESState(eps))

    def step(theta, state, t, acc, pair):
        state, loss = system.step(tree_add(theta, acc.eps), state, t)
        return Step(state, acc, loss, tree_scale(loss, acc.eps))

    return es_windowed(system, Rule(start, step), settings, noise=pairing)
