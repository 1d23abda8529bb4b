"""Backpropagation through time in parallel over time: the exact full-episode gradient
through a system's parallel form ``episode(theta, key) -> losses [horizon]`` (e.g. a
linear recurrence by associative scan, Martin & Cundy 2018), instead of a sequential
scan of ``step``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll.system import check_episode_against_theta, check_num_workers, check_parallel_form, check_system
from unroll.window import Estimator, Gradient, keyword_only, plain_rule, windowed


def _episode_gradient(system):
    """A ``WindowGradient`` for whole episodes run by ``system.episode`` from the keys the
    next episodes start from: ``g = grad (1/(W T)) sum_{w,t} l_{w,t}``."""

    def gradient(window, theta, extra):
        def mean_loss(theta):
            run = lambda key: system.episode(theta, key)
            losses = jax.vmap(jax.vmap(run))(window.episode_keys)
            return jnp.mean(losses), losses

        (_, losses), grad = jax.value_and_grad(mean_loss, has_aux=True)(theta)
        _, finish = window.restart(theta)
        # the final states are never formed; the next window starts new episodes anyway
        return Gradient(grad, finish(window.start_states, losses), extra)

    return gradient


@keyword_only
def parallel_bptt(system, *, num_workers: int = 1) -> Estimator:
    """Full BPTT in parallel over time: the exact gradient ``grad (1/T) sum_t l_t`` of
    ``num_workers`` whole episodes, differentiating ``system.episode(theta, key)`` (the
    same per-step losses as stepping, computed in parallel) by reverse mode.

    The same estimate, episodes, keys and ``info`` as ``full_bptt(system,
    num_workers=...)``; with a linear recurrence inside ``episode`` the cost is
    ``O(log T)`` sequential depth instead of ``T`` steps. Between episodes the workers
    keep the state they held (the final state is not formed: every call starts new
    episodes). Needs ``system.episode``; a system without one is refused here.
    """
    check_system(system)
    check_parallel_form(system, "parallel_bptt")
    num_workers = check_num_workers(num_workers)
    est = windowed(
        system,
        plain_rule(system),
        truncation=system.horizon,
        num_workers=num_workers,
        gradient=_episode_gradient(system),
        stagger=False,
    )

    def init(theta, key):
        state = est.init(theta, key)
        check_episode_against_theta(system, theta, key)
        return state

    return Estimator(init, est.estimate)
