"""Backpropagation through time in parallel over time: the exact full-episode gradient
through a system's parallel form ``episode(theta, key) -> losses [horizon]`` (e.g. a
linear recurrence by associative scan, Martin & Cundy 2018), or, for any system, by
Newton's method over the whole episode (DEER and quasi-DEER, ``_newton``), instead of a
sequential scan of ``step``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unroll._constructor import keyword_only
from unroll._errors import BadValue
from unroll._system import (
    check_discrete_independent,
    check_episode_against_theta,
    check_num_workers,
    check_parallel_form,
    check_positive_float,
    check_positive_int,
    check_system,
)
from unroll.builder import plain_rule, windowed
from unroll.contract import Estimator, Gradient
from unroll.estimators._newton import Settings, newton_gradient
from unroll.parallel import SOLVERS, episode_view

__all__ = ["parallel_bptt"]


def _episode_gradient(system):
    """A ``WindowGradient`` for whole episodes run by ``system.episode`` from the keys the
    next episodes start from: ``g = grad (1/(W T)) sum_{w,t} l_{w,t}``."""

    def gradient(window, theta, shared):
        def mean_loss(theta):
            run = lambda key: system.episode(theta, key)
            losses = jax.vmap(jax.vmap(run))(window.episode_keys)
            return jnp.mean(losses), losses

        (_, losses), grad = jax.value_and_grad(mean_loss, has_aux=True)(theta)
        _, finish = window.restart(theta)
        # the final states are never formed; the next window starts new episodes anyway
        return Gradient(grad, finish(window.start_states, losses), shared)

    return gradient


_INITIAL_GUESSES = ("zeros", "previous")


@keyword_only
def parallel_bptt(
    system,
    *,
    num_workers: int = 1,
    solver: str | None = None,
    tolerance: float | None = None,
    max_iterations: int | None = None,
    initial_guess: str = "zeros",
) -> Estimator:
    r"""Full BPTT in parallel over time: the exact episode gradient with $O(\log T)$ depth.

    The exact gradient of `num_workers` whole episodes,

    $$
    g = \nabla_\theta \frac{1}{T} \sum_{t<T} \ell_t,
    $$

    the same estimate, episodes, keys and `info` as `full_bptt(system, num_workers=...)`,
    with $O(\log T)$ sequential depth instead of a sequential scan of `step`:

    * `solver=None`: reverse mode through the system's parallel form
      `system.episode(theta, key)` (e.g. a linear recurrence by associative scan, Martin
      & Cundy 2018); a system without one is refused here.
    * `solver="deer"` or `"quasi-deer"`: any system, by Newton's method on `step` over the
      whole episode (Lim et al. 2024; `unroll.parallel.solve_recurrence`): dense step
      Jacobians $J_t$ in a matrix scan, or $\operatorname{diag}(J_t)$ only (Gonzalez et
      al. 2024: $O(T N)$ memory in the scan, more iterations). The iterations stop at a
      residual $\max_t |x_t - f_t(x_{t-1})| / (1 + |f_t|) \le$ `tolerance` or after
      `max_iterations`, from zeros or, with `initial_guess="previous"`, the last call's
      trajectories. The gradient is the implicit one at the solution (an adjoint reverse
      recurrence), not through the iterations. An episode that misses the tolerance is
      recomputed exactly by a sequential scan: never a gradient from an unconverged
      solve. `solver="elk"` or `"quasi-elk"` damp each Newton step (Levenberg-Marquardt
      by a parallel Kalman smoother, with a trust region; Gonzalez et al. 2024), which
      keeps the iterates finite where the full step overflows; the fixed point and the
      gradient are DEER's. The state's int and key leaves must not depend on its float leaves (checked
      at `init`); they are computed once, by a scan of `step` that keeps only them.

    Between episodes the workers keep the state they held (the final state is not formed:
    every call starts new episodes).

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`;
            with `solver=None` it must have the parallel form `episode(theta, key) -> losses
            [horizon]`, checked against `step` at `init`.
        num_workers: $W$, the episodes run per call; the estimate is their mean. Default 1.
        solver: `None` (default) for the system's parallel form `episode`; `"deer"` (dense
            Newton), `"quasi-deer"` (diagonal Jacobians), `"elk"` or `"quasi-elk"` (their
            damped steps) for Newton's method over time on `step`, which any system allows
            (`unroll.parallel.SOLVERS`).
        tolerance: the Newton solvers' stopping residual (relative, dimensionless, a
            positive float); default `None`: `unroll.parallel.default_tolerance`, about
            1e-5 in float32 and 1e-10 in float64. Only with a `solver`.
        max_iterations: the most Newton iterations per episode (a positive int); default
            `None`: $\min(T, 100)$ ($T$ iterations are always exact). Only with a `solver`.
        initial_guess: where the Newton iterations start: `"zeros"` (default) or
            `"previous"`, the trajectories of the last call (kept in the estimator's
            state, $[W, T, N]$). Only with a `solver`.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState`. `info`
        has `loss` and `steps` and, with a `solver`, `iterations` (the most over episodes),
        `residual` (the largest), `converged` (all episodes) and `fallback` (episodes
        recomputed), and for quasi-DEER and quasi-ELK `adjoint_iterations` and `adjoint_fallback`.

    Raises:
        ValueError: `solver` is not one of the above; `tolerance`, `max_iterations` or
            `initial_guess` is given without a `solver`, or is invalid; `solver=None` and
            the system has no parallel form `episode`.
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument has the
            wrong type.
    """
    check_system(system)
    num_workers = check_num_workers(num_workers)
    settings = _solver_settings(system, solver, tolerance, max_iterations, initial_guess)
    if settings is None:
        check_parallel_form(system, "parallel_bptt")
    est = windowed(
        system,
        plain_rule(system),
        truncation=system.horizon,
        num_workers=num_workers,
        gradient=_episode_gradient(system) if settings is None else newton_gradient(system, settings),
        stagger=False,
        shared_state=_previous_trajectories(system, num_workers) if settings and settings.warm_start else None,
    )

    def init(theta, key):
        state = est.init(theta, key)  # (checks init and step first)
        if settings is None:
            check_episode_against_theta(system, theta, key)
        else:
            check_discrete_independent(system, theta, key, f"parallel_bptt(solver={settings.solver!r})")
        return state

    return Estimator(init, est.estimate)


def _solver_settings(system, solver, tolerance, max_iterations, initial_guess) -> Settings | None:
    """The checked solver settings (``None`` for the parallel form)."""
    if solver is None:
        given = {"tolerance": tolerance, "max_iterations": max_iterations}
        for name, value in given.items():
            if value is not None:
                raise BadValue(
                    f"`{name}`={value!r} is a setting of the Newton solvers, but `solver` is None (the system's "
                    f"parallel form, which needs none); pass solver='deer' or 'quasi-deer', or drop `{name}`."
                )
        if initial_guess != "zeros":
            raise BadValue(
                f"`initial_guess`={initial_guess!r} is a setting of the Newton solvers, but `solver` is None; "
                "pass solver='deer' or 'quasi-deer', or drop `initial_guess`."
            )
        return None
    if solver not in SOLVERS:
        raise BadValue(
            f"`solver` must be None (the system's parallel form `episode`) or one of {', '.join(map(repr, SOLVERS))} "
            f"(Newton over time on `step`), got {solver!r}."
        )
    if tolerance is not None:
        tolerance = check_positive_float(
            tolerance, "tolerance", "it is the relative residual a solve stops at, e.g. 1e-6."
        )
    if max_iterations is None:
        max_iterations = min(system.horizon, 100)
    max_iterations = check_positive_int(
        max_iterations, "max_iterations", f"It caps the Newton iterations per window (horizon={system.horizon} always "
        "suffice), e.g. max_iterations=50."
    )  # fmt: skip
    if initial_guess not in _INITIAL_GUESSES:
        raise BadValue(
            f"`initial_guess` must be 'zeros' or 'previous' (the last call's trajectories), got {initial_guess!r}."
        )
    return Settings(solver, tolerance, max_iterations, initial_guess == "previous")


def _previous_trajectories(system, num_workers: int):
    """The warm-start state: ``[W, T, N]`` zeros, replaced by each call's trajectories."""

    def previous(theta, key):
        x0 = jax.eval_shape(lambda th, k: episode_view(system, th, k).x0, theta, key)  # the real view, [N]
        return jnp.zeros((num_workers, system.horizon) + x0.shape, x0.dtype)

    return previous
