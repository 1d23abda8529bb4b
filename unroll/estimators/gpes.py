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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll._constructor import keyword_only
from unroll._system import check_positive_int
from unroll._tree import tree_add, tree_scale
from unroll.contract import EpisodeStart, Estimator, Rule, Step
from unroll.estimators._es import check_es, es_windowed


class Chunked(NamedTuple):
    """A GPES particle's accumulator: ``xi``, the sum of its episode's chunk noises,
    ``eps``, the current chunk's, and ``windows``, the windows of the episode begun."""

    xi: Any
    eps: Any
    windows: jax.Array


def _where(pred: jax.Array, a, b):
    """``where(pred, a, b)`` with ``pred`` ``[W, P]`` over leaves with leading ``[W, P]``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred.reshape(pred.shape + (1,) * (x.ndim - 2)), x, y), a, b)


def _chunked_rule(system, reuse: int) -> Rule:
    def start(theta, key, noise_key, fresh):  # an episode's first window begins a chunk
        return EpisodeStart(system.init(tree_add(theta, fresh), key), Chunked(fresh, fresh, jnp.ones((), jnp.int32)))

    def begin(acc, fresh):  # every `reuse` windows of the episode a new chunk, with fresh noise
        new_chunk = acc.windows % reuse == 0
        zeros = jax.tree_util.tree_map(jnp.zeros_like, fresh)
        return Chunked(
            tree_add(acc.xi, _where(new_chunk, fresh, zeros)), _where(new_chunk, fresh, acc.eps), acc.windows + 1
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
    """GPES-``reuse`` (Li et al. 2023): each particle redraws its noise every ``reuse``
    windows of its episode and weighs a step's loss by the sum of its episode's noises,
    ``g = 1/(N K sigma^2) sum_i sum_k xi_{i,k} l_{i,k}``; unbiased. ``reuse=1`` is PES, a
    ``reuse`` covering the whole episode is NRES (see the module)."""
    settings = check_es(system, truncation, sigma, num_particles, num_workers, antithetic, nonfinite)
    reuse = check_positive_int(
        reuse,
        "reuse",
        "It counts the windows one noise draw is kept for: use an int >= 1 (1 = pes; "
        "ceil(horizon / truncation) + 1 or more = nres).",
    )
    return es_windowed(system, _chunked_rule(system, reuse), settings)
