"""Backpropagation through time: full and truncated.

Full BPTT: ``grad (1/T) sum_{t<T} l_t`` through one ``lax.scan`` of a whole episode.
Truncated BPTT: the gradient of the mean loss of one window of ``K`` steps, the
state entering the window held fixed (``d s_0 / d theta := 0``); biased, and
exact when ``K = T`` and windows are aligned to episodes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from unroll.system import check_against_theta, check_positive_int, check_system, check_truncation
from unroll.window import (
    Estimator, Worker, plain_rule, run_windows, start_workers, window_info, worker_shape_check,
)


class BPTTState(NamedTuple):
    workers: Worker  # [num_workers, 1]


def _bptt(system, truncation: int, num_workers: int, stagger: bool) -> Estimator:
    rule = plain_rule(system)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, _ = start_workers(system, rule, theta, key, num_workers, 1, None, stagger)
        return BPTTState(workers)

    def estimate(theta, state, key):
        del key  # episodes draw their keys from each worker's own key chain
        worker_shape_check(state.workers, num_workers, 1)

        def window_loss(theta):
            workers, _, _, losses = run_windows(system, rule, theta, state.workers, (), None, truncation)
            return jnp.mean(losses), (workers, losses)

        (_, (workers, losses)), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
        return grad, BPTTState(workers), window_info(losses, num_workers * truncation)

    return Estimator(init, estimate)


def truncated_bptt(system, truncation: int, num_workers: int = 1) -> Estimator:
    """Truncated BPTT: ``g = grad_theta (1/K) sum_{k<K} l_{t+k}`` with the window's
    incoming state held fixed, averaged over ``num_workers`` staggered workers.

    A window that crosses an episode end goes on into the next episode (the new
    episode's ``init`` is differentiated too). Biased for ``K < T``.
    """
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _bptt(system, truncation, num_workers, stagger=True)


def full_bptt(system, num_workers: int = 1) -> Estimator:
    """Full BPTT: the exact gradient ``grad (1/T) sum_t l_t`` of ``num_workers``
    whole episodes (fresh keys each call), averaged. Memory ``O(T n)``."""
    check_system(system)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _bptt(system, system.horizon, num_workers, stagger=False)
