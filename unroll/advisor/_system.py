r"""The measurements of the system at theta, before any candidate: its chaos (the leading Lyapunov
exponent, ``NUM_TRAJECTORIES`` trajectories, and the exact gradient's norm against the horizon over
``NUM_EPISODES`` episodes; ``measure_chaos``), and the reference gradient $G$ the candidates are
measured against (exact, or of the $\sigma$-smoothed loss under chaos; ``measure_reference``), each
with the sentences that report it."""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll._exact import episode_loss
from unroll.advisor._thresholds import CHAOS_Z, GROWTH_FACTOR, NORM_GROWTH, REFERENCE_TARGET
from unroll.diagnostics import lyapunov_spectrum

NUM_TRAJECTORIES = 8  # Lyapunov trajectories (mean and standard error of lambda_1)
NUM_EPISODES = 8  # episodes of the gradient-norm-against-horizon curve


class Chaos(NamedTuple):
    """What ``measure_chaos`` found (``Advice``'s fields of the same names)."""

    running: np.ndarray  # [trajectories, steps]: the running lambda_1 estimates
    exponent: float  # lambda_1 per step (mean over trajectories)
    exponent_error: float  # its standard error
    horizons: list[int]  # prefix lengths h of the gradient-norm curve
    norm_median: np.ndarray  # median norm over episodes of the exact gradient of the first h steps' mean loss
    norm_max: np.ndarray
    chaotic: bool
    exploding: bool
    reasons: list[str]  # the chaos and the gradient norms, a sentence each
    timings: dict  # seconds of the phases chaos and gradient_norms


class Reference(NamedTuple):
    """What ``measure_reference`` found: $G$ and its standard error, theta's structure."""

    gradient: Any
    error: Any  # G's standard error per component
    count: int  # episodes (exact) or antithetic pairs (smoothed) averaged
    kind: str  # "exact" or "smoothed, sigma=..."
    relative_error: float  # |SE| / |G|
    reason: str  # the sentence that reports it
    seconds: float


def measure_chaos(system, theta, lyapunov_key, norms_key) -> Chaos:
    """lambda_1 (from ``lyapunov_key``) and the gradient norms against the horizon (from ``norms_key``),
    and whether the system is chaotic over its horizon and its BPTT-family gradients explode."""
    tick = time.perf_counter()
    running = _lyapunov(system, theta, lyapunov_key)
    timings = {"chaos": time.perf_counter() - tick}
    finals = running[:, -1]
    exponent = float(np.mean(finals))
    exponent_error = float(np.std(finals, ddof=1) / math.sqrt(len(finals)))
    tick = time.perf_counter()
    horizons, norms = _horizon_norms(system, theta, norms_key)
    timings["gradient_norms"] = time.perf_counter() - tick
    norm_median, norm_max = np.median(norms, axis=0), np.max(norms, axis=0)
    horizon = system.horizon
    chaotic = bool(
        not math.isfinite(exponent)
        or (exponent > CHAOS_Z * exponent_error and exponent * horizon >= math.log(GROWTH_FACTOR))
    )
    growth = _growth(horizons, norm_median)
    exploding = bool(chaotic and (growth >= NORM_GROWTH or not math.isfinite(growth)))
    reasons = [_chaos_reason(exponent, exponent_error, horizon, chaotic, running.shape)]
    reasons.append(_growth_reason(horizons, norm_median, growth, chaotic, exploding))
    return Chaos(
        running, exponent, exponent_error, horizons, norm_median, norm_max, chaotic, exploding, reasons, timings
    )


def measure_reference(system, theta, key, sigma: float, seconds: float, chaos: Chaos) -> Reference:
    """The reference gradient: exact, or of the loss smoothed at ``sigma`` where ``chaos.chaotic``;
    averaged for at most ``seconds``."""
    tick = time.perf_counter()
    if chaos.chaotic:
        reference, error, count = _smoothed_reference(system, theta, key, sigma, seconds)
        kind = f"smoothed, sigma={sigma:g}"
    else:
        reference, error, count = _exact_reference(system, theta, key, seconds)
        kind = "exact"
    spent = time.perf_counter() - tick
    reference_norm = float(np.linalg.norm(ravel_pytree(reference)[0]))
    relative_error = float(np.linalg.norm(ravel_pytree(error)[0])) / reference_norm if reference_norm > 0 else 0.0
    reason = _reference_reason(kind, count, relative_error, chaos.chaotic, chaos.exponent, system.horizon)
    return Reference(reference, error, count, kind, relative_error, reason, spent)


def _lyapunov(system, theta, key) -> np.ndarray:
    """``[NUM_TRAJECTORIES, steps]`` running estimates of lambda_1 (per step) from independent starts."""
    horizon = system.horizon
    num_steps = int(min(max(2 * horizon, 500), 4000))
    warmup = int(min(horizon, 500))
    measure = lambda k: lyapunov_spectrum(system, theta, k, num_steps, k=1, warmup=warmup).running[:, 0]
    return np.asarray(jax.jit(jax.vmap(measure))(jax.random.split(key, NUM_TRAJECTORIES)), np.float64)


def _horizons(horizon: int) -> list[int]:
    return sorted({max(1, horizon // 2**j) for j in range(7)})


def _horizon_norms(system, theta, key) -> tuple[list[int], np.ndarray]:
    """The norm of the exact gradient of the mean loss over the first ``h`` steps of an episode, for
    each ``h`` of ``_horizons``: ``[NUM_EPISODES, len(horizons)]``. One forward pass per episode and a
    vmapped backward pass per ``h`` (``jax.jacrev``)."""
    horizon = system.horizon
    horizons = _horizons(horizon)
    weights = np.zeros((len(horizons), horizon))
    for i, h in enumerate(horizons):
        weights[i, :h] = 1.0 / h

    def prefix_means(theta, key):
        _, losses = jax.lax.scan(
            lambda state, t: system.step(theta, state, t),
            system.init(theta, key),
            jnp.arange(horizon, dtype=jnp.int32),
        )
        return jnp.asarray(weights, losses.dtype) @ losses

    def norms(key):
        jacobian = jax.jacrev(prefix_means)(theta, key)
        squares = [
            jnp.sum(leaf.reshape(len(horizons), -1) ** 2, axis=1) for leaf in jax.tree_util.tree_leaves(jacobian)
        ]
        return jnp.sqrt(sum(squares))

    keys = jax.random.split(key, NUM_EPISODES)
    return horizons, np.asarray(jax.jit(jax.vmap(norms))(keys), np.float64)


def _growth(horizons: list[int], median: np.ndarray) -> float:
    """The median norm at ``T`` over that at ``T / 16``."""
    start = horizons.index(max(1, horizons[-1] // 16))
    top, bottom = float(median[-1]), float(median[start])
    if bottom > 0:
        return top / bottom
    return 1.0 if top == 0 else float("inf")


class _Running(NamedTuple):
    """Chan et al.'s pairwise update of a mean and sum of squared deviations (float64)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    def add(self, batch: np.ndarray) -> _Running:
        n, mean = batch.shape[0], batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        if self.count == 0:
            return _Running(n, mean, m2)
        total = self.count + n
        delta = mean - self.mean
        return _Running(total, self.mean + delta * n / total, self.m2 + m2 + delta**2 * self.count * n / total)

    def error(self) -> np.ndarray:
        return np.sqrt(self.m2 / (self.count - 1) / self.count)


def _averaged(sample_batch, key, seconds: float, batch: int = 16, max_batches: int = 256):
    """Batches of samples until the mean's relative standard error is ``REFERENCE_TARGET``, ``seconds``
    are spent (after two batches) or ``max_batches``; ``(mean, standard error, count)`` flat, float64."""
    start = time.perf_counter()
    stats = _Running(0, np.zeros(0), np.zeros(0))
    for b in range(max_batches):  # a loop over batches of vmapped episodes, each one compiled call
        flat = np.asarray(sample_batch(jax.random.split(jax.random.fold_in(key, b), batch)), np.float64)
        stats = stats.add(flat)
        if b >= 1:
            norm = np.linalg.norm(stats.mean)
            relative = np.linalg.norm(stats.error()) / norm if norm > 0 else 0.0
            if relative <= REFERENCE_TARGET or time.perf_counter() - start >= seconds:
                break
    return stats.mean, stats.error(), stats.count


def _exact_reference(system, theta, key, seconds: float):
    flat, unravel = ravel_pytree(theta)
    gradient = jax.jit(jax.vmap(lambda k: ravel_pytree(jax.grad(lambda th: episode_loss(system, th, k))(theta))[0]))
    mean, error, count = _averaged(gradient, key, seconds)
    return unravel(jnp.asarray(mean, flat.dtype)), unravel(jnp.asarray(error, flat.dtype)), count


def _smoothed_reference(system, theta, key, sigma: float, seconds: float):
    """$\\nabla \\mathbb E_\\epsilon L(\\theta + \\sigma \\epsilon)$ from antithetic pairs over whole episodes,
    ``(L(theta + sigma eps) - L(theta - sigma eps)) / (2 sigma) eps``, both on one episode key."""
    flat, unravel = ravel_pytree(theta)

    def pair(k):
        noise_key, episode_key = jax.random.split(k)
        eps = jax.random.normal(noise_key, flat.shape, flat.dtype)
        plus = episode_loss(system, unravel(flat + sigma * eps), episode_key)
        minus = episode_loss(system, unravel(flat - sigma * eps), episode_key)
        return (plus - minus) / (2 * sigma) * eps

    mean, error, count = _averaged(jax.jit(jax.vmap(pair)), key, seconds, batch=64)
    return unravel(jnp.asarray(mean, flat.dtype)), unravel(jnp.asarray(error, flat.dtype)), count


def _chaos_reason(exponent, error, horizon, chaotic, shape) -> str:
    if not math.isfinite(exponent):
        return "lambda_1 is not finite: the state diverges; treated as chaotic."
    growth = exponent * horizon
    return (
        f"lambda_1 = {exponent:+.4g} ± {error:.2g} per step ({shape[0]} trajectories of {shape[1]} steps): "
        f"perturbations {'grow' if growth > 0 else 'shrink'} by exp(lambda_1 T) = {math.exp(min(growth, 700)):.3g} "
        f"over the horizon T = {horizon}; "
        + (
            "chaotic over its horizon"
            if chaotic
            else "not chaotic over its horizon (chaotic needs lambda_1 > "
            f"{CHAOS_Z:g} SE and exp(lambda_1 T) >= {GROWTH_FACTOR:g})"
        )
        + "."
    )


def _growth_reason(horizons, median, growth, chaotic, exploding) -> str:
    start = horizons.index(max(1, horizons[-1] // 16))
    text = (
        f"The exact gradient's median norm over episodes goes from {median[start]:.3g} (first {horizons[start]} "
        f"steps) to {median[-1]:.3g} (all {horizons[-1]}), x{growth:.3g}"
    )
    if exploding:
        return text + f": BPTT-family gradients explode over this horizon (chaotic, and x >= {NORM_GROWTH:g})."
    if chaotic:
        return text + f": under x{NORM_GROWTH:g}, so the chaos does not reach the loss's gradient; not exploding."
    return text + ": not exploding."


def _reference_reason(kind, count, relative_error, chaotic, exponent, horizon) -> str:
    if kind == "exact":
        text = (
            f"Reference: the exact gradient averaged over {count} episodes, relative standard error "
            f"{relative_error:.3g} (the system is not chaotic over its horizon)"
        )
    else:
        text = (
            f"Reference: the gradient of the loss smoothed at {kind.split(', ')[1]} (the task's sigma), from "
            f"{count} antithetic ES pairs over whole episodes, relative standard error {relative_error:.3g}: the "
            f"exact gradient of a chaotic system is noise (its variance grows like exp(2 lambda_1 T) = "
            f"{math.exp(min(2 * exponent * horizon, 700)):.3g})"
        )
    if relative_error > REFERENCE_TARGET:
        text += (
            f"; over the {REFERENCE_TARGET:g} aimed at in the time given, so only larger biases are detectable "
            "(the bias z counts the reference's error)"
        )
    return text + "."
