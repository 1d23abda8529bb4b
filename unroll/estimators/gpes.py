"""GPES-K (Li et al. 2023): generalized persistent ES, between PES and NRES.

Each particle splits its episode into chunks of ``reuse`` consecutive windows (the
window in which the episode starts counts as its first) and runs every window of
chunk ``c`` at ``theta + eps_c``, a fresh draw per chunk. The loss of a step in chunk
``c`` is weighed by ``xi = eps_1 + ... + eps_c``, the noise of every chunk of the
episode so far, each once, and ``g = 1/(N K sigma^2) sum_i sum_k xi_{i,k} l_{i,k}``.
Unbiased for the episode objective: the smoothed loss of the steps of chunk ``c``
depends on ``theta`` through ``theta + eps_1, ..., theta + eps_c``, and
``E[eps_j l] / sigma^2`` is its derivative through the ``j``-th.

``reuse = 1`` is PES (fresh noise every window); a ``reuse`` of at least
``ceil(T / K) + 1`` windows covers every episode, and the noise is drawn once per
episode: NRES. The variance lies between theirs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import keyword_only
from unroll._engine import batched_select
from unroll._system import check_positive_int
from unroll._tree import PyTree, tree_add, tree_scale
from unroll.contract import EpisodeStart, Estimator, Rule, Step
from unroll.estimators._es import check_es, es_windowed

__all__ = ["GPESState", "gpes"]


class GPESState(NamedTuple):
    """The accumulator of one GPES particle."""

    xi: PyTree  # theta's structure: the sum of its episode's chunk perturbations, which weighs its losses
    eps: PyTree  # theta's structure: the current chunk's perturbation, which it runs at
    windows: jax.Array  # int32: the windows of its episode begun (a new chunk every `reuse`)


def _chunked_rule(system, reuse: int) -> Rule:
    def start(theta, key, noise_key, fresh):  # an episode's first window begins a chunk
        return EpisodeStart(system.init(tree_add(theta, fresh), key), GPESState(fresh, fresh, jnp.ones((), jnp.int32)))

    def begin(acc, fresh):  # every `reuse` windows of the episode a new chunk, with fresh noise
        new_chunk = acc.windows % reuse == 0
        zeros = jax.tree_util.tree_map(jnp.zeros_like, fresh)
        return GPESState(
            tree_add(acc.xi, batched_select(new_chunk, fresh, zeros)),
            batched_select(new_chunk, fresh, acc.eps),
            acc.windows + 1,
        )

    def step(theta, state, t, acc, fresh):
        state, loss = system.step(tree_add(theta, acc.eps), state, t)
        return Step(state, acc, loss, tree_scale(loss, acc.xi))

    return Rule(start, step, begin)


@keyword_only
def gpes(
    system,
    *,
    truncation: int,
    sigma: float,
    num_particles: int,
    num_workers: int = 1,
    reuse: int,
    antithetic: bool = True,
    nonfinite: str = "stop",
) -> Estimator:
    r"""GPES-`reuse` (Li et al. 2023): generalized persistent ES, between PES and NRES.

    Each particle splits its episode into chunks of `reuse` consecutive windows and runs
    every window of chunk $c$ at $\theta + \epsilon_c$, a fresh draw
    $\epsilon_c \sim \mathcal N(0, \sigma^2 I)$ per chunk. The loss of a step in chunk $c$
    is weighed by the noise of every chunk of the episode so far, each once,
    $\xi = \epsilon_1 + \dots + \epsilon_c$, and

    $$
    g = \frac{1}{N K \sigma^2} \sum_{i=1}^{N} \sum_{k<K} \xi_{i,k}\, \ell_{i,k},
    $$

    averaged over workers. Unbiased for the episode objective: the smoothed loss of the
    steps of chunk $c$ depends on $\theta$ through
    $\theta + \epsilon_1, \dots, \theta + \epsilon_c$, and
    $\mathbb E[\epsilon_j \ell] / \sigma^2$ is its derivative through the $j$-th. Its
    variance lies between PES's (`reuse=1`) and NRES's (`reuse` covering the whole
    episode).

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
        reuse: the windows one noise draw is kept for, required (an int $\ge 1$; the window
            in which the episode starts counts as the first of its chunk). `reuse=1` is PES;
            $\lceil T / K \rceil + 1$ or more covers every episode, and the noise is drawn
            once per episode: NRES.
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
        noise weight $\xi$ (with the current chunk's noise and the count of windows);
        `info` has `loss` (the mean over the particles' steps), `steps` ($W N K$) and, with
        `nonfinite="drop"`, `dropped`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the wrong
            type (`antithetic` must be a bool).
        ValueError: a count (`reuse` included) or `sigma` is not positive, `truncation` is
            above `horizon`, `num_particles` is odd with `antithetic=True`, or `nonfinite` is
            not `"stop"` or `"drop"`.
    """
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    reuse = check_positive_int(
        reuse,
        "reuse",
        "It counts the windows one noise draw is kept for: use an int >= 1 (1 = pes; "
        "ceil(horizon / truncation) + 1 or more = nres).",
    )
    return es_windowed(system, _chunked_rule(system, reuse), settings)
