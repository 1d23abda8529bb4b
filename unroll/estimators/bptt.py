"""Backpropagation through time: full and truncated.

Full BPTT: ``grad (1/T) sum_{t<T} l_t`` through one ``lax.scan`` of a whole episode.
Truncated BPTT: the gradient of the mean loss of one window of ``K`` steps, the
state entering the window held fixed (``d s_0 / d theta := 0``); biased, and
exact when ``K = T`` and windows are aligned to episodes. (Checkpointed BPTT is
``unroll.estimators.checkpointed``.)
"""

from __future__ import annotations

from unroll._constructor import check_window, keyword_only
from unroll._system import check_num_workers, check_system
from unroll.builder import backprop, plain_rule, windowed
from unroll.contract import Estimator


@keyword_only
def truncated_bptt(system, *, truncation: int, num_workers: int = 1) -> Estimator:
    """Truncated BPTT: ``g = grad_theta (1/K) sum_{k<K} l_{t+k}`` with the window's
    incoming state held fixed, averaged over ``num_workers`` staggered workers.

    A window that crosses an episode end goes on into the next episode (the new
    episode's ``init`` is differentiated too). Biased for ``K < T``.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    return windowed(system, plain_rule(system), truncation=truncation, num_workers=num_workers, gradient=backprop)


@keyword_only
def full_bptt(system, *, num_workers: int = 1) -> Estimator:
    """Full BPTT: the exact gradient ``grad (1/T) sum_t l_t`` of ``num_workers``
    whole episodes (fresh keys each call), averaged. Memory ``O(T n)``."""
    check_system(system)
    num_workers = check_num_workers(num_workers)
    return windowed(
        system,
        plain_rule(system),
        truncation=system.horizon,
        num_workers=num_workers,
        gradient=backprop,
        stagger=False,
    )
