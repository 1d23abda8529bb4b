"""Whole episodes solved by Newton's method over time (DEER, quasi-DEER) and the implicit
gradient at the solution: the ``WindowGradient`` of ``parallel_bptt(solver=...)``.

An episode's float state ``x_t`` (the real view of the state's float and complex leaves)
solves ``x_t = f_t(x_{t-1})``, ``x_{-1} = x_0(theta)`` from ``init``; its other leaves
(ints, PRNG keys) must not depend on the floats, so their trajectory ``d_t`` is computed
once and enters ``f_t`` as data. ``unroll.parallel.solve_recurrence`` finds the ``x_t``.

At the solution the gradient of ``L = w sum_t l_t(x_{t-1})`` is the implicit one: with the
adjoint ``lambda_t = dL/dx_t``, a reverse linear recurrence

    lambda_{T-1} = 0,   lambda_t = g_{t+1} + J_{t+1}^T lambda_{t+1},   g_t = d l_t / d x_{t-1},

``dL/dtheta`` is the gradient of the surrogate ``w sum_t [l_t + lambda_t . f_t]`` with
``lambda`` and ``x_{t >= 0}`` held fixed and ``x_{-1} = x_0(theta)`` live (so ``init``'s
theta is differentiated too). DEER solves the adjoint exactly by one matrix scan;
quasi-DEER, which stores no dense Jacobian, by the same Newton iteration with
``diag(J)`` on it. Episodes whose solve misses the tolerance within the iteration cap are
recomputed exactly by a sequential scan (and counted in ``info["fallback"]``), so no
gradient rests on an unconverged solve.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll.contract import Gradient
from unroll.jacobians import DIAGONAL_SOLVERS, episode_jacobian
from unroll.parallel import discrete_inputs, episode_view, matrix_recurrence, sequential_recurrence, solve_recurrence


class Settings(NamedTuple):
    """A Newton solver's settings, checked by ``parallel_bptt``."""

    solver: str
    tolerance: float | None
    max_iterations: int
    warm_start: bool


def _solve(system, settings: Settings, theta, keys, guesses):
    """Every episode's trajectory ``[B, T, N]``, their inputs and the batched ``Solution``;
    where a solve did not converge, the exact sequential trajectory instead."""

    def one(key, guess):
        view = episode_view(system, theta, key)
        xs = discrete_inputs(view, system.horizon)
        solution = solve_recurrence(
            view.advance, view.x0, xs, solver=settings.solver, guess=guess, tolerance=settings.tolerance,
            max_iterations=settings.max_iterations, jacobian=episode_jacobian(system, theta, key, solver=settings.solver),
        )  # fmt: skip
        return xs, solution

    xs, solution = jax.vmap(one)(keys, guesses)

    def exact(key, inputs):
        view = episode_view(system, theta, key)
        return sequential_recurrence(view.advance, view.x0, inputs)

    trajectory = _or_sequential(solution.trajectory, solution.converged, lambda: jax.vmap(exact)(keys, xs))
    return trajectory, xs, solution


def _or_sequential(trajectories: jax.Array, converged: jax.Array, sequential) -> jax.Array:
    """``trajectories`` ``[B, T, N]`` where ``converged`` ``[B]``, else ``sequential()``'s
    exact ones: behind one unbatched ``cond``, so the scan runs only when some solve failed."""

    def fallback():
        return jnp.where(converged[:, None, None], trajectories, sequential())

    return jax.lax.cond(jnp.all(converged), lambda: trajectories, fallback)


class _Adjoint(NamedTuple):
    """One episode's adjoint recurrence, reversed in time (step ``s = T-1-t``):
    ``transposed(lambda_{t+1}, inputs_s) = g_{t+1} + J_{t+1}^T lambda_{t+1}`` (0 at ``s = 0``,
    ``t = T-1``, which has no step after it), from ``zero``; ``with_diagonal`` adds
    ``diag(J_{t+1})`` (``diag(J^T) = diag(J)``); ``inputs`` are ``(x_t, (d_t, t+1), g_{t+1}, live)``;
    ``linearize(x, a) -> (fn(x, a), J)`` is ``episode_jacobian``'s for the solver."""

    fn: Any
    linearize: Any
    transposed: Any
    with_diagonal: Any
    inputs: tuple
    zero: jax.Array


def _adjoint(system, theta, key, xs, trajectory, solver: str) -> _Adjoint:
    view = episode_view(system, theta, key)
    linearize = episode_jacobian(system, theta, key, solver=solver)
    previous = jnp.concatenate([view.x0[None], trajectory[:-1]])
    fn = view.advance
    g = jax.vmap(jax.grad(view.loss))(previous, xs)
    after = jax.tree_util.tree_map(lambda z: jnp.flip(jnp.roll(z, -1, axis=0), 0), (previous, xs, g))
    live = jnp.arange(system.horizon) > 0

    def transposed(lam, inputs):
        x, a, grad_loss, on = inputs
        pullback = jax.vjp(lambda y: fn(y, a), x)[1]
        return jnp.where(on, grad_loss + pullback(lam)[0], 0.0)

    def with_diagonal(lam, inputs):
        x, a, _, on = inputs
        return transposed(lam, inputs), jnp.where(on, linearize(x, a)[1], 0.0)

    return _Adjoint(fn, linearize, transposed, with_diagonal, (*after, live), jnp.zeros_like(view.x0))


def _adjoints(system, settings: Settings, theta, keys, xs, trajectory):
    """Every episode's adjoint ``lambda`` ``[B, T, N]`` (unit loss weights) and its ``info``.
    DEER: one reverse matrix scan with ``J^T``, exact. Quasi-DEER: the diagonal Newton
    iteration, and where it misses the tolerance the exact sequential reverse scan."""
    problem = lambda k, a, x: _adjoint(system, theta, k, a, x, settings.solver)
    if settings.solver not in DIAGONAL_SOLVERS:  # deer, elk: J^T in one exact reverse matrix scan

        def dense(k, a, x):
            p = problem(k, a, x)
            previous, inputs, g, live = p.inputs
            jac = jnp.swapaxes(jax.vmap(p.linearize)(previous, inputs)[1], 1, 2)
            lam = matrix_recurrence(jnp.where(live[:, None, None], jac, 0.0), jnp.where(live[:, None], g, 0.0), p.zero)
            return jnp.flip(lam, 0)

        return jax.vmap(dense)(keys, xs, trajectory), {}

    def newton(k, a, x):
        p = problem(k, a, x)
        solution = solve_recurrence(
            p.transposed, p.zero, p.inputs, solver="quasi-deer", tolerance=settings.tolerance,
            max_iterations=settings.max_iterations, jacobian=p.with_diagonal,
        )  # fmt: skip
        return jnp.flip(solution.trajectory, 0), solution.iterations, solution.converged

    lam, iterations, converged = jax.vmap(newton)(keys, xs, trajectory)

    def exact(k, a, x):
        p = problem(k, a, x)
        return jnp.flip(sequential_recurrence(p.transposed, p.zero, p.inputs), 0)

    lam = _or_sequential(lam, converged, lambda: jax.vmap(exact)(keys, xs, trajectory))
    info = {"adjoint_iterations": jnp.max(iterations), "adjoint_fallback": jnp.sum(~converged).astype(jnp.int32)}
    return lam, info


def newton_gradient(system, settings: Settings):
    """The ``WindowGradient`` of ``parallel_bptt(solver=...)``: ``W P`` whole episodes from
    the window's episode keys, solved in parallel, ``g = grad (1/(W P T)) sum l`` by the
    implicit adjoint; the shared state is the last trajectories when warm-starting."""

    def gradient(window, theta, shared):
        shape = window.episode_keys.shape[:2]  # [W, P] (raw uint32 keys add a trailing axis)
        keys = window.episode_keys.reshape((-1,) + window.episode_keys.shape[2:])
        fixed = jax.lax.stop_gradient(theta)
        guesses = shared if settings.warm_start else None
        trajectory, xs, solution = _solve(system, settings, fixed, keys, guesses)
        lam, adjoint_info = _adjoints(system, settings, fixed, keys, xs, trajectory)
        weight = 1.0 / (keys.shape[0] * system.horizon)

        def surrogate(theta):
            def one(key, inputs, x, lam):
                view = episode_view(system, theta, key)
                previous = jnp.concatenate([view.x0[None], x[:-1]])
                new, losses, _ = jax.vmap(view.step)(previous, inputs)
                return jnp.sum(losses) + jnp.sum(lam * new), losses

            total, losses = jax.vmap(one)(keys, xs, trajectory, lam)
            return weight * jnp.sum(total), losses

        grad, losses = jax.grad(surrogate, has_aux=True)(theta)
        _, finish = window.restart(fixed)
        info = {
            "iterations": jnp.max(solution.iterations),
            "residual": jnp.max(solution.residual),
            "converged": jnp.all(solution.converged),
            "fallback": jnp.sum(~solution.converged).astype(jnp.int32),
            **adjoint_info,
        }
        new_shared = trajectory if settings.warm_start else shared
        return Gradient(grad, finish(window.start_states, losses.reshape(shape + losses.shape[1:])), new_shared, info)

    return gradient
