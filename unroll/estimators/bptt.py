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

__all__ = ["full_bptt", "truncated_bptt"]


@keyword_only
def truncated_bptt(system, *, truncation: int, num_workers: int = 1) -> Estimator:
    r"""Truncated BPTT: the gradient of one window's mean loss, its incoming state held fixed.

    Each call advances every worker by a window of $K$ = `truncation` steps from $s_t$ and
    differentiates the window's mean loss with the incoming state treated as a constant
    ($\frac{\partial s_t}{\partial \theta} := 0$):

    $$
    g = \nabla_\theta \frac{1}{K} \sum_{k<K} \ell_{t+k},
    $$

    averaged over `num_workers` staggered workers. Biased for $K < T$ (the window's past is
    not differentiated); exact when $K = T$ and the windows are aligned to episodes. A window
    that crosses an episode end goes on into the next episode (the new episode's `init` is
    differentiated too). Memory $O(K n)$ per worker.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); one call of
            `estimate` takes `num_workers * truncation` system steps.
        num_workers: $W$, independent trajectories, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes so that the windows cover the horizon;
            the estimate is their mean. Default 1.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` holding the
        workers' system states, and `info` has `loss` (the mean loss of the window's steps)
        and `steps`.

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument is not an int.
        ValueError: `truncation` is below 1 or above `horizon`, or `num_workers` below 1.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    return windowed(system, plain_rule(system), truncation=truncation, num_workers=num_workers, gradient=backprop)


@keyword_only
def full_bptt(system, *, num_workers: int = 1) -> Estimator:
    r"""Full BPTT: the exact gradient of the mean episode loss, through whole episodes.

    Each call runs `num_workers` whole episodes (fresh keys each call) in one `lax.scan`
    and backpropagates through them:

    $$
    g = \nabla_\theta \frac{1}{T} \sum_{t<T} \ell_t,
    $$

    averaged over the workers. Unbiased; memory $O(T n)$ (every state of the episode is
    stored for the backward pass; `checkpointed_bptt` trades recomputation for memory).
    The window is the episode, so no reset can happen inside it: the compiled gradient is
    that of `jax.value_and_grad` through one `lax.scan` of `step`, plus drawing the next
    episode's keys (`benchmarks/exact_overhead.py`).

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        num_workers: $W$, the episodes run per call (each a trajectory of its own, not
            staggered); the estimate is their mean. Default 1.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState`, and `info`
        has `loss` (the mean loss of the episodes' steps) and `steps` ($W T$).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or `num_workers` is not an int.
        ValueError: `num_workers` is below 1.
    """
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
