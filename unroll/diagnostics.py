"""Diagnostics of an unrolled system: why an estimator fails on it.

``lyapunov_spectrum``: the ``k`` leading Lyapunov exponents of the state dynamics
``s_{t+1} = f_theta(s_t, t)`` by the QR (Benettin) method: carry an orthonormal
``Q_t`` (``[N, k]``, on the state's real view), push it through the step with ``k``
Jacobian-vector products, re-orthonormalize ``J_t Q_t = Q_{t+1} R_t`` and average
``log |diag R_t|``. No dense Jacobian is formed (unless ``k = N``, when the ``N`` jvps
are the Jacobian). Positive exponents mean chaos: gradients through ``T`` steps grow
like ``exp(lambda_1 T)`` (Metz et al. 2021). ``parallel_outlook`` turns the same exponent
into a forecast of how many Newton iterations DEER needs to evaluate the system in
parallel over time.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from unroll.system import check_positive_int, check_system, real_view

__all__ = [
    "GradientQuality",
    "JacobianSpectrum",
    "HorizonGradients",
    "LyapunovSpectrum",
    "ParallelOutlook",
    "estimate_samples",
    "gradient_quality",
    "gradient_vs_horizon",
    "jacobian_spectrum",
    "loss_along",
    "lyapunov_spectrum",
    "parallel_outlook",
    "quality_table",
]


class LyapunovSpectrum(NamedTuple):
    """``exponents``: ``[k]``, per step, largest first (divide by the time step for per unit
    time); ``running``: ``[num_steps, k]``, the estimate after each measured step (for a
    convergence plot); ``final_state``: the state after warm-up and measurement."""

    exponents: jax.Array
    running: jax.Array
    final_state: object


def lyapunov_spectrum(
    system, theta, key, num_steps: int, k: int | None = None, warmup: int = 100, state=None
) -> LyapunovSpectrum:
    """The ``k`` leading Lyapunov exponents (per step) of ``system``'s state dynamics at
    ``theta``, from ``state`` (default ``system.init(theta, key)``) after ``warmup`` steps
    that bring the state onto its attractor and align ``Q`` (started at a random
    orthonormal frame drawn from ``key``) with the leading directions.

    The state runs on without episode resets; the step's time index is ``t mod horizon``.
    A pytree state is flattened to its real view (complex leaves as real and imaginary
    parts; int and key leaves carried along, not differentiated). ``k`` defaults to the
    full dimension ``N``. Everything is one ``lax.scan``: jit-able."""
    check_system(system)
    num_steps = check_positive_int(num_steps, "num_steps", "the number of measured steps, e.g. 10_000.")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ValueError(
            f"`warmup` must be an int >= 0, got {warmup!r}; it is the number of steps run before measuring, "
            "e.g. warmup=1000 (0 measures from the first step)."
        )
    warmup = int(warmup)
    state = system.init(theta, key) if state is None else state
    vector, _ = real_view(system, state)
    dim = vector.shape[0]
    k = dim if k is None else check_positive_int(k, "k", f"the number of exponents, at most the state size {dim}.")
    if k > dim:
        raise ValueError(f"`k`={k} exceeds the state's real dimension N={dim}; pass k <= {dim} (or None for all).")
    frame, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, 1), (dim, k), vector.dtype))

    def advance(carry, t):
        state, frame = carry
        vector, f = real_view(system, state)
        step = lambda v: f(theta, v, t % system.horizon)[0]
        _, pushed = jax.vmap(lambda q: jax.jvp(step, (vector,), (q,)), in_axes=1, out_axes=(None, 1))(frame)
        new_state = f(theta, vector, t % system.horizon)[2]
        frame, r = jnp.linalg.qr(pushed)
        return (new_state, frame), jnp.log(jnp.abs(jnp.diagonal(r)))

    (state, frame), _ = jax.lax.scan(advance, (state, frame), jnp.arange(warmup))
    (state, _), logs = jax.lax.scan(advance, (state, frame), warmup + jnp.arange(num_steps))
    running = jnp.cumsum(logs, axis=0) / jnp.arange(1, num_steps + 1)[:, None]
    order = jnp.argsort(-running[-1])
    return LyapunovSpectrum(running[-1][order], running[:, order], state)


# Newton iterations DEER and quasi-DEER take, about ``c / |lambda_1|`` for contracting
# dynamics: fitted on a driven tanh RNN (N = 16, T = 1000, float64) whose gain sweeps
# lambda_1 from -1.6 to -0.14 per step (notebooks/chaos.ipynb, section 5)
ITERATIONS_TIMES_EXPONENT = {"deer": 3.0, "quasi-deer": 30.0}


class ParallelOutlook(NamedTuple):
    """What ``parallel_outlook`` finds: the leading Lyapunov ``exponent`` (per step), the
    ``expected_iterations`` of the Newton solve (``horizon`` where it is not contracting),
    whether parallel evaluation is ``expected_fast`` and the ``rule`` that says so, in words."""

    exponent: float
    expected_iterations: int
    expected_fast: bool
    rule: str


def parallel_outlook(
    system, theta, key, *, solver: str = "deer", max_iterations: int = 100, num_steps: int = 1000, warmup: int = 100
) -> ParallelOutlook:
    """Whether ``parallel_bptt(system, solver=...)`` is expected to converge fast, from
    the leading Lyapunov exponent ``lambda_1`` (``lyapunov_spectrum`` over ``num_steps``).

    The rule: Newton over time corrects an error in its guess at step ``t`` through the
    Jacobian products ahead of it, which shrink like ``exp(lambda_1 k)`` over ``k`` steps.
    With ``lambda_1 < 0`` a correction reaches only ``~1 / |lambda_1|`` steps, so the
    iterations stay near ``c / |lambda_1|`` whatever the horizon (``c`` =
    ``ITERATIONS_TIMES_EXPONENT[solver]``: 3 for DEER, 30 for quasi-DEER, measured); with
    ``lambda_1 >= 0`` they grow toward ``horizon`` (where the chain is exact) or the
    iterates diverge, and sequential evaluation is as fast. Expected fast iff
    ``lambda_1 < 0`` and ``c / |lambda_1| <= max_iterations``. Not jit-able (returns Python
    values); ``c`` holds for saturating RNNs, other systems may differ by a small factor.
    """
    if solver not in ITERATIONS_TIMES_EXPONENT:
        raise ValueError(f"`solver` must be 'deer' or 'quasi-deer', got {solver!r}.")
    max_iterations = check_positive_int(max_iterations, "max_iterations", "the iteration cap, e.g. 100.")
    spectrum = jax.jit(lambda th, k: lyapunov_spectrum(system, th, k, num_steps, k=1, warmup=warmup))(theta, key)
    exponent = float(spectrum.exponents[0])
    c = ITERATIONS_TIMES_EXPONENT[solver]
    contracting = exponent < 0
    expected = min(system.horizon, math.ceil(c / -exponent)) if contracting else system.horizon
    fast = contracting and c / -exponent <= max_iterations
    rule = (
        f"lambda_1 = {exponent:+.4f} per step: {'contracting' if contracting else 'not contracting'}; "
        f"{solver} takes about {c:g} / |lambda_1| iterations when lambda_1 < 0 and up to the horizon "
        f"({system.horizon}) otherwise; fast iff lambda_1 < 0 and {c:g} / |lambda_1| <= max_iterations "
        f"({max_iterations}): {'expected fast' if fast else 'not expected fast; prefer full_bptt or checkpointed_bptt'}."
    )
    return ParallelOutlook(exponent, expected, fast, rule)


class JacobianSpectrum(NamedTuple):
    """Along one trajectory of ``num_steps`` steps: ``step``, ``[num_steps, N]``, the singular
    values of each one-step Jacobian ``d s_{t+1} / d s_t`` (largest first); ``log_product``,
    ``[num_steps, N]``, the logs of the singular values of the products
    ``d s_{t+1} / d s_0 = J_t ... J_0`` (logs, so exploding products stay finite)."""

    step: jax.Array
    log_product: jax.Array


def jacobian_spectrum(system, theta, key, num_steps: int, state=None) -> JacobianSpectrum:
    """Singular values of the one-step state Jacobians and of their products along the
    trajectory from ``state`` (default ``system.init(theta, key)``), on the state's real
    view, time index ``t mod horizon``. Dense: ``N`` jvps and an ``N x N`` SVD per step
    (use ``lyapunov_spectrum`` for large ``N``). The product is carried rescaled by its
    largest entry, the log scale kept apart, so it neither overflows nor underflows."""
    check_system(system)
    num_steps = check_positive_int(num_steps, "num_steps", "the number of steps, e.g. 100.")
    state = system.init(theta, key) if state is None else state
    vector, _ = real_view(system, state)
    dim = vector.shape[0]

    def advance(carry, t):
        state, product, log_scale = carry
        vector, f = real_view(system, state)
        jacobian = jax.jacfwd(lambda v: f(theta, v, t % system.horizon)[0])(vector)
        product = jacobian @ product
        scale = jnp.max(jnp.abs(product))
        scale = jnp.where(scale > 0, scale, 1.0)
        product, log_scale = product / scale, log_scale + jnp.log(scale)
        step_values = jnp.linalg.svd(jacobian, compute_uv=False)
        product_values = jnp.log(jnp.linalg.svd(product, compute_uv=False)) + log_scale
        return (f(theta, vector, t % system.horizon)[2], product, log_scale), (step_values, product_values)

    carry = (state, jnp.eye(dim, dtype=vector.dtype), jnp.zeros((), vector.dtype))
    _, (step_values, log_product) = jax.lax.scan(advance, carry, jnp.arange(num_steps))
    return JacobianSpectrum(step_values, log_product)


class GradientQuality(NamedTuple):
    """Statistics of ``num_samples`` independent estimates ``g_i`` against the exact ``g``:
    ``bias = mean g_i - g`` (theta-shaped) and its norm; ``bias_z``, the largest
    ``|bias_j| / (std_j / sqrt(n))`` (how many standard errors the bias is) over components
    whose bias is above rounding level (``1e3 eps (|g| + |mean g_i|)``; 0 if none; ``inf``
    where such a bias has no spread);
    ``variance = mean |g_i - mean g_i|^2``; ``cosine`` of each sample to ``g`` (mean) and of
    the mean; ``snr = |mean g_i|^2 / variance``; ``samples`` ``[n, p]`` (flat)."""

    bias: object
    bias_norm: float
    bias_z: float
    variance: float
    mean_cosine: float
    cosine_of_mean: float
    snr: float
    samples: jax.Array


def estimate_samples(estimator, theta, key, num_samples: int, windows_per_sample: int = 1, burn_in: int = 0):
    """``num_samples`` independent estimates at a fixed ``theta``, stacked (leading axis):
    each the mean of ``windows_per_sample`` consecutive window estimates from a fresh
    ``init`` (keys ``split(key, num_samples)``; window ``k`` uses ``fold_in(run key, k)``),
    after ``burn_in`` windows that are run and dropped (so that accumulators such as PES's
    ``xi`` reach their steady state); vmapped over samples, one compiled call."""
    num_samples = check_positive_int(num_samples, "num_samples", "e.g. 1000 independent estimates.")
    windows_per_sample = check_positive_int(windows_per_sample, "windows_per_sample")
    if isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral):
        raise TypeError(f"`burn_in` must be an int >= 0 (windows run and dropped first), got {burn_in!r}.")
    if burn_in < 0:
        raise ValueError(f"`burn_in` must be an int >= 0 (windows run and dropped first), got {burn_in!r}.")

    def sample(key):
        init_key, run_key = jax.random.split(key)
        state = estimator.init(theta, init_key)

        def window(state, k):
            grad, state, _ = estimator.estimate(theta, state, jax.random.fold_in(run_key, k))
            return state, grad

        _, grads = jax.lax.scan(window, state, jnp.arange(burn_in + windows_per_sample))
        return jax.tree_util.tree_map(lambda g: jnp.mean(g[burn_in:], axis=0), grads)

    return jax.jit(jax.vmap(sample))(jax.random.split(key, num_samples))


def gradient_quality(estimator, theta, key, num_samples: int, exact, windows_per_sample: int = 1) -> GradientQuality:
    """Bias, variance, cosine to ``exact`` and signal-to-noise ratio of ``estimator`` at a
    fixed ``theta``. Sample ``i`` is the mean of ``windows_per_sample`` consecutive window
    estimates of a fresh estimator state (``estimate_samples``: staggered workers, fresh
    episodes). ``exact`` is the reference gradient, e.g.
    ``unroll.exact_gradient(system, theta, key, num_episodes)``.

    For an estimator whose windows only average to the episode gradient over a whole
    episode (``rtrl``, ``truncated_bptt`` with staggered workers), set
    ``windows_per_sample`` so the windows cover whole episodes."""
    from jax.flatten_util import ravel_pytree

    exact_flat, unravel = ravel_pytree(exact)
    stacked = estimate_samples(estimator, theta, key, num_samples, windows_per_sample)
    samples = jax.vmap(lambda g: ravel_pytree(g)[0])(stacked)
    mean = jnp.mean(samples, axis=0)
    bias = mean - exact_flat
    std = jnp.std(samples, axis=0)
    standard_error = std / jnp.sqrt(num_samples)
    # a bias at rounding level is none, whatever its spread (which is rounding too)
    rounding = 1e3 * jnp.finfo(samples.dtype).eps * (jnp.linalg.norm(exact_flat) + jnp.linalg.norm(mean))
    visible = jnp.abs(bias) > rounding
    z = jnp.where(visible, jnp.abs(bias) / jnp.where(standard_error > 0, standard_error, 0.0), 0.0)
    variance = jnp.mean(jnp.sum((samples - mean) ** 2, axis=1))
    unit = lambda v: v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + 1e-30)
    return GradientQuality(
        bias=unravel(bias),
        bias_norm=float(jnp.linalg.norm(bias)),
        bias_z=float(jnp.max(z)),
        variance=float(variance),
        mean_cosine=float(jnp.mean(unit(samples) @ unit(exact_flat))),
        cosine_of_mean=float(unit(mean) @ unit(exact_flat)),
        snr=float(jnp.sum(mean**2) / variance) if variance > 0 else float("inf"),
        samples=samples,
    )


class HorizonGradients(NamedTuple):
    """Per horizon (arrays ``[len(horizons)]``): the mean episode loss; the norm of each
    episode's exact gradient, median and max over episodes; the variance over episodes of
    the exact gradient (``mean |g_e - mean g|^2``); and, with an estimator, the median norm
    and the variance of its estimates."""

    horizons: jax.Array
    loss: jax.Array
    exact_norm_median: jax.Array
    exact_norm_max: jax.Array
    exact_variance: jax.Array
    estimator_norm_median: jax.Array | None
    estimator_variance: jax.Array | None


def gradient_vs_horizon(
    make_system,
    theta,
    key,
    horizons,
    num_episodes: int = 16,
    make_estimator=None,
    num_samples: int = 16,
    windows_per_sample: int = 1,
) -> HorizonGradients:
    """The exact gradient (full BPTT of each episode, ``num_episodes`` keys) and optionally an
    estimator's (``make_estimator(system)``, ``num_samples`` samples of
    ``estimate_samples``) as the horizon grows: ``make_system(horizon) -> System``. One
    compiled computation per horizon (shapes change with it)."""
    from jax.flatten_util import ravel_pytree

    from unroll.exact import episode_loss

    num_episodes = check_positive_int(num_episodes, "num_episodes")
    rows = []
    for horizon in horizons:
        system = make_system(int(horizon))
        keys = jax.random.split(key, num_episodes)
        loss_grad = jax.vmap(jax.value_and_grad(lambda th, k: episode_loss(system, th, k)), in_axes=(None, 0))
        losses, grads = jax.jit(loss_grad)(theta, keys)
        flat = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
        norms = jnp.linalg.norm(flat, axis=1)
        row = [
            jnp.mean(losses),
            jnp.median(norms),
            jnp.max(norms),
            jnp.mean(jnp.sum((flat - flat.mean(axis=0)) ** 2, axis=1)),
        ]
        if make_estimator is not None:
            samples = estimate_samples(
                make_estimator(system), theta, jax.random.fold_in(key, 1), num_samples, windows_per_sample
            )
            flat = jax.vmap(lambda g: ravel_pytree(g)[0])(samples)
            row += [
                jnp.median(jnp.linalg.norm(flat, axis=1)),
                jnp.mean(jnp.sum((flat - flat.mean(axis=0)) ** 2, axis=1)),
            ]
        rows.append(row)
    columns = [jnp.stack(c) for c in zip(*rows)]
    extra = columns[4:] if make_estimator is not None else [None, None]
    return HorizonGradients(jnp.asarray(horizons), *columns[:4], *extra)


def loss_along(
    make_system,
    theta,
    direction,
    key,
    horizons,
    offsets,
    num_episodes: int = 8,
    sigma: float | None = None,
    num_perturbations: int = 64,
):
    """The mean episode loss at ``theta + a * direction`` for every ``a`` in ``offsets`` and
    every horizon (``[len(horizons), len(offsets)]``; the rugged landscapes of Metz et al.
    2021), and with ``sigma`` the ES-smoothed loss ``E_eps L(theta + a d + sigma eps)``
    (``num_perturbations`` antithetic Gaussian draws, common to all points) beside it.
    Returns ``(losses, smoothed or None)``."""
    from jax.flatten_util import ravel_pytree

    from unroll.exact import episode_loss

    flat, unravel = ravel_pytree(theta)
    d = ravel_pytree(direction)[0]
    offsets = jnp.asarray(offsets, flat.dtype)
    keys = jax.random.split(key, num_episodes)
    eps = jax.random.normal(jax.random.fold_in(key, 1), (max(num_perturbations // 2, 1), flat.size), flat.dtype)
    eps = jnp.concatenate([eps, -eps])
    losses, smoothed = [], []
    for horizon in horizons:
        system = make_system(int(horizon))
        mean_loss = lambda p: jnp.mean(jax.vmap(lambda k: episode_loss(system, unravel(p), k))(keys))
        points = flat + offsets[:, None] * d
        losses.append(jax.jit(jax.vmap(mean_loss))(points))
        if sigma is not None:
            smooth = lambda p: jnp.mean(jax.vmap(lambda e: mean_loss(p + sigma * e))(eps))
            smoothed.append(jax.jit(jax.vmap(smooth))(points))
    return jnp.stack(losses), (jnp.stack(smoothed) if sigma is not None else None)


def quality_table(qualities: dict) -> str:
    """A markdown table of ``{estimator name: GradientQuality}``: bias norm, bias in standard
    errors, variance, cosines and SNR, one row per estimator."""
    lines = [
        "| estimator | bias norm | bias (max z) | variance | mean cosine | cosine of mean | SNR |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in qualities.items():
        lines.append(
            f"| {name} | {q.bias_norm:.3g} | {q.bias_z:.3g} | {q.variance:.3g} | {q.mean_cosine:.3f} | "
            f"{q.cosine_of_mean:.4f} | {q.snr:.3g} |"
        )
    return "\n".join(lines)
