r"""Diagnostics of an unrolled system: why an estimator fails on it.

``lyapunov_spectrum``: the $k$ leading Lyapunov exponents of the state dynamics
$s_{t+1} = f_\theta(s_t, t)$ by the QR (Benettin) method: carry an orthonormal
$Q_t$ (`[N, k]`, on the state's real view), push it through the step with $k$
Jacobian-vector products, re-orthonormalize $J_t Q_t = Q_{t+1} R_t$ and average
$\log |\mathrm{diag}\, R_t|$. No dense Jacobian is formed (unless $k = N$, when the $N$ jvps
are the Jacobian). Positive exponents mean chaos: gradients through $T$ steps grow
like $e^{\lambda_1 T}$ (Metz et al. 2021). ``parallel_outlook`` turns the same exponent
into a forecast of how many Newton iterations DEER needs to evaluate the system in
parallel over time.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadType, BadValue
from unroll._system import check_positive_int, check_system, real_view

__all__ = [
    "ITERATIONS_TIMES_EXPONENT",
    "estimate_samples",
    "gradient_quality",
    "gradient_vs_horizon",
    "GradientQuality",
    "HorizonGradients",
    "jacobian_spectrum",
    "JacobianSpectrum",
    "loss_along",
    "lyapunov_spectrum",
    "LyapunovSpectrum",
    "outlook_from_exponent",
    "parallel_outlook",
    "ParallelOutlook",
    "quality_of_windows",
    "quality_table",
    "window_sampler",
]


class LyapunovSpectrum(NamedTuple):
    """The leading Lyapunov exponents of a system, and how their estimate converged (`lyapunov_spectrum`).

    Attributes:
      exponents: `[k]`, per step, largest first (divide by the time step for per unit time).
      running: `[num_steps, k]`, the estimate after each measured step (for a convergence plot).
      final_state: the state after warm-up and measurement.
    """

    exponents: jax.Array
    running: jax.Array
    final_state: object


def lyapunov_spectrum(
    system, theta, key, num_steps: int, k: int | None = None, warmup: int = 100, state=None
) -> LyapunovSpectrum:
    r"""The `k` leading Lyapunov exponents (per step) of `system`'s state dynamics at `theta`.

    They are measured from `state` (default `system.init(theta, key)`) after `warmup` steps
    that bring the state onto its attractor and align $Q$ (started at a random
    orthonormal frame drawn from `key`) with the leading directions, by the QR method of the
    module's docstring.

    The state runs on without episode resets; the step's time index is $t \bmod T$ ($T$ the horizon).
    A pytree state is flattened to its real view (complex leaves as real and imaginary
    parts; int and key leaves carried along, not differentiated). Everything is one `lax.scan`: jit-able.

    Args:
      system: the system.
      theta: the outer parameters, fixed.
      key: the key of the initial state (when `state` is None) and of the random initial frame.
      num_steps: the measured steps the exponents are averaged over.
      k: the number of exponents, at most the state's real dimension $N$. Default: all $N$.
      warmup: the steps run before measuring (an int >= 0; 0 measures from the first step).
      state: the state to start from. Default: `system.init(theta, key)`.

    Returns:
      A `LyapunovSpectrum`.
    """
    check_system(system)
    num_steps = check_positive_int(num_steps, "num_steps", "the number of measured steps, e.g. 10_000.")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise BadValue(
            f"`warmup` must be an int >= 0, got {warmup!r}; it is the number of steps run before measuring, "
            "e.g. warmup=1000 (0 measures from the first step)."
        )
    warmup = int(warmup)
    state = system.init(theta, key) if state is None else state
    vector, _ = real_view(system, state)
    dim = vector.shape[0]
    k = dim if k is None else check_positive_int(k, "k", f"the number of exponents, at most the state size {dim}.")
    if k > dim:
        raise BadValue(f"`k`={k} exceeds the state's real dimension N={dim}; pass k <= {dim} (or None for all).")
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
# (ELK and quasi-ELK start near DEER's full step and take its iterations where it converges: tests/test_deer.py's
# contracting systems, docs/parallel-and-checkpointing.md)
ITERATIONS_TIMES_EXPONENT = {"deer": 3.0, "quasi-deer": 30.0, "elk": 3.0, "quasi-elk": 30.0}


class ParallelOutlook(NamedTuple):
    """What `parallel_outlook` finds: whether parallel evaluation over time is expected fast.

    Attributes:
      exponent: the leading Lyapunov exponent (per step).
      expected_iterations: the expected iterations of the Newton solve (`horizon` where it is not contracting).
      expected_fast: whether parallel evaluation is expected fast.
      rule: the rule that says so, in words.
      damping_needed: whether the full Newton step from the zeros guess overflows (measured by `parallel_outlook`:
        one undamped iteration on the episode `key` starts), so that DEER and quasi-DEER give up at once and the
        damped solvers (`"elk"`, `"quasi-elk"`) are the ones to try; `None` where not measured.
    """

    exponent: float
    expected_iterations: int
    expected_fast: bool
    rule: str
    damping_needed: bool | None = None


def parallel_outlook(
    system, theta, key, *, solver: str = "deer", max_iterations: int = 100, num_steps: int = 1000, warmup: int = 100
) -> ParallelOutlook:
    r"""Whether evaluating `system` in parallel over time by Newton iterations is expected to converge fast.

    The evaluation is `parallel_bptt(system, solver=...)`'s; the forecast comes from the leading
    Lyapunov exponent $\lambda_1$ (`lyapunov_spectrum` over `num_steps`). It speaks of
    evaluation speed only: the gradient it computes is the exact one either way, and which
    estimator suits the system is ``unroll.advise``'s question.

    The rule: Newton over time corrects an error in its guess at step $t$ through the
    Jacobian products ahead of it, which shrink like $e^{\lambda_1 k}$ over $k$ steps.
    With $\lambda_1 < 0$ a correction reaches only $\sim 1 / |\lambda_1|$ steps, so the
    iterations stay near $c / |\lambda_1|$ whatever the horizon ($c$ =
    ``ITERATIONS_TIMES_EXPONENT[solver]``: 3 for DEER, 30 for quasi-DEER, measured); with
    $\lambda_1 \ge 0$ they grow toward ``horizon`` (where the chain is exact) or the
    iterates diverge, and sequential evaluation is as fast. Expected fast iff
    $\lambda_1 < 0$ and $c / |\lambda_1| \le$ ``max_iterations``. Not jit-able (returns
    Python values); $c$ holds for saturating RNNs, other systems may differ by a small factor.

    It also runs one undamped Newton iteration (DEER's, or quasi-DEER's for the diagonal
    solvers) from the zeros guess on the episode `key` starts: where that overflows,
    the full step is useless from there and damping is needed (`damping_needed`; the
    damped solvers ``"elk"`` and ``"quasi-elk"`` keep their iterates finite).

    Args:
      system: the system.
      theta: the outer parameters.
      key: the key of ``lyapunov_spectrum``'s initial state and frame.
      solver: ``"deer"``, ``"quasi-deer"``, ``"elk"`` or ``"quasi-elk"``.
      max_iterations: the iteration cap of the Newton solve.
      num_steps: the steps $\lambda_1$ is averaged over.
      warmup: the steps run before measuring.

    Returns:
      A `ParallelOutlook` (Python values).
    """
    if solver not in ITERATIONS_TIMES_EXPONENT:
        raise BadValue(f"`solver` must be one of {', '.join(map(repr, ITERATIONS_TIMES_EXPONENT))}, got {solver!r}.")
    max_iterations = check_positive_int(max_iterations, "max_iterations", "the iteration cap, e.g. 100.")
    spectrum = jax.jit(lambda th, k: lyapunov_spectrum(system, th, k, num_steps, k=1, warmup=warmup))(theta, key)
    outlook = outlook_from_exponent(float(spectrum.exponents[0]), system.horizon, solver, max_iterations)
    overflows = bool(jax.jit(lambda th, k: _full_step_overflows(system, th, k, solver))(theta, key))
    verdict = (
        "the full Newton step from zeros overflows on this episode: damping is needed (solver='elk' or "
        "'quasi-elk'; without it the solve gives up and falls back to the sequential pass)"
        if overflows
        else "the full Newton step from zeros stays finite on this episode (no damping needed to start)"
    )
    return outlook._replace(rule=f"{outlook.rule} {verdict[0].upper()}{verdict[1:]}.", damping_needed=overflows)


def _full_step_overflows(system, theta, key, solver: str) -> jax.Array:
    """Whether one undamped Newton step from zeros overflows on the episode `key` starts."""
    from unroll.jacobians import DIAGONAL_SOLVERS, episode_jacobian
    from unroll.parallel import discrete_inputs, episode_view, full_step_overflows

    view = episode_view(system, theta, key)
    xs = discrete_inputs(view, system.horizon)
    jacobian = episode_jacobian(system, theta, key, solver="quasi-deer" if solver in DIAGONAL_SOLVERS else "deer")
    return full_step_overflows(view.advance, view.x0, xs, solver=solver, jacobian=jacobian)


def outlook_from_exponent(
    exponent: float, horizon: int, solver: str = "deer", max_iterations: int = 100
) -> ParallelOutlook:
    r"""``parallel_outlook``'s rule applied to a measured leading exponent $\lambda_1$ (per step).

    Args:
      exponent: $\lambda_1$, per step.
      horizon: the episode length $T$ (the iterations where the system is not contracting).
      solver: ``"deer"``, ``"quasi-deer"``, ``"elk"`` or ``"quasi-elk"`` (its constant $c$).
      max_iterations: the iteration cap.

    Returns:
      A `ParallelOutlook`: expected iterations $\min(T, \lceil c / |\lambda_1| \rceil)$ when $\lambda_1 < 0$, else
      $T$; expected fast iff $\lambda_1 < 0$ and $c / |\lambda_1| \le$ `max_iterations`.
    """
    if solver not in ITERATIONS_TIMES_EXPONENT:
        raise BadValue(f"`solver` must be one of {', '.join(map(repr, ITERATIONS_TIMES_EXPONENT))}, got {solver!r}.")
    c = ITERATIONS_TIMES_EXPONENT[solver]
    contracting = exponent < 0
    expected = min(horizon, math.ceil(c / -exponent)) if contracting else horizon
    fast = contracting and c / -exponent <= max_iterations
    verdict = (
        "parallel evaluation expected fast"
        if fast
        else "parallel evaluation not expected fast (sequential evaluation is about as fast; the gradient is the "
        "same exact one either way)"
    )
    rule = (
        f"lambda_1 = {exponent:+.4f} per step: {'contracting' if contracting else 'not contracting'}; "
        f"{solver} takes about {c:g} / |lambda_1| Newton iterations when lambda_1 < 0 and up to the horizon "
        f"({horizon}) otherwise; fast iff lambda_1 < 0 and {c:g} / |lambda_1| <= max_iterations "
        f"({max_iterations}): {verdict}."
    )
    return ParallelOutlook(exponent, expected, fast, rule)


class JacobianSpectrum(NamedTuple):
    r"""Singular values of the state Jacobians along one trajectory of `num_steps` steps (`jacobian_spectrum`).

    Attributes:
      step: `[num_steps, N]`, the singular values of each one-step Jacobian
        $J_t = \partial s_{t+1} / \partial s_t$ (largest first).
      log_product: `[num_steps, N]`, the logs of the singular values of the products
        $\partial s_{t+1} / \partial s_0 = J_t \cdots J_0$ (logs, so exploding products stay finite).
    """

    step: jax.Array
    log_product: jax.Array


def jacobian_spectrum(system, theta, key, num_steps: int, state=None) -> JacobianSpectrum:
    r"""Singular values of the one-step state Jacobians and of their products along a trajectory.

    The trajectory starts from `state` (default `system.init(theta, key)`), on the state's real
    view, time index $t \bmod T$. Dense: $N$ jvps and an $N \times N$ SVD per step
    (use `lyapunov_spectrum` for large $N$). The product is carried rescaled by its
    largest entry, the log scale kept apart, so it neither overflows nor underflows.

    Args:
      system: the system.
      theta: the outer parameters, fixed.
      key: the key of the initial state (when `state` is None).
      num_steps: the steps of the trajectory.
      state: the state to start from. Default: `system.init(theta, key)`.

    Returns:
      A `JacobianSpectrum`.
    """
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
    r"""Statistics of `num_samples` independent estimates $g_i$ against the reference $g$ (`exact`).

    $n$ is the number of samples, $\bar g$ their mean, $s_j$ their standard deviation in component
    $j$ and $e_j$ the reference's own standard error (0 unless given).

    Attributes:
      bias: $\bar g - g$ (theta-shaped).
      bias_norm: its norm.
      bias_z: the largest $|\mathrm{bias}_j| / \sqrt{s_j^2 / n + e_j^2}$ (how many standard errors the bias is),
        over components whose bias is above rounding level ($10^3 \epsilon (|g| + |\bar g|)$); 0 if none; `inf`
        where such a bias has no spread.
      variance: $\frac1n \sum_i |g_i - \bar g|^2$.
      mean_cosine: the cosine of each sample to $g$, averaged.
      cosine_of_mean: the cosine of $\bar g$ to $g$.
      snr: $|\bar g|^2 /$ `variance`.
      samples: `[n, p]` (flat).
      relative_bias: $\sqrt{\max(|\bar g - g|^2 - \sum_j (s_j^2/n + e_j^2), 0)} / |g|$: the bias's norm relative
        to the reference's, its expected noise taken out (the raw $|\bar g - g|$ of a noisy estimator is mostly
        noise; this is 0 on average where there is no bias).
      window_snr: the SNR of a single window's estimate,
        $|\bar g|^2 / \frac1{nw} \sum_{i,k} |g_{ik} - \bar g|^2$ over the $w$ windows $g_{ik}$ of every sample
        (equal to `snr` when `windows_per_sample` is 1): what one `estimate` call delivers.
      reference_error: the norm of the reference's standard error $|e|$ (0 unless given).
    """

    bias: object
    bias_norm: float
    bias_z: float
    variance: float
    mean_cosine: float
    cosine_of_mean: float
    snr: float
    samples: jax.Array
    relative_bias: float = float("nan")
    window_snr: float = float("nan")
    reference_error: float = 0.0


def window_sampler(estimator, theta, windows_per_sample: int = 1, burn_in: int = 0):
    """A compiled function `keys [n] -> every window's estimate`, leading axes `[n, windows_per_sample]`.

    Sample `i` runs `burn_in + windows_per_sample` windows from a fresh `init` (`split(keys[i])`:
    the init key, then window `k`'s `fold_in(run key, k)`) and keeps the last `windows_per_sample`.
    Call it on chunks of keys to take samples as time allows (one compile for every chunk of one size).

    Args:
      estimator: any estimator (``init``, ``estimate``).
      theta: the fixed outer parameters.
      windows_per_sample: consecutive windows kept per sample.
      burn_in: windows run and dropped before them.

    Returns:
      The jitted, vmapped function `sampler(keys)`: for keys `[n]`, theta's structure with leading axes
      `[n, windows_per_sample]`.
    """
    windows_per_sample = check_positive_int(windows_per_sample, "windows_per_sample")
    if isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral):
        raise BadType(f"`burn_in` must be an int >= 0 (windows run and dropped first), got {burn_in!r}.")
    if burn_in < 0:
        raise BadValue(f"`burn_in` must be an int >= 0 (windows run and dropped first), got {burn_in!r}.")

    def sample(key):
        init_key, run_key = jax.random.split(key)
        state = estimator.init(theta, init_key)

        def window(state, k):
            grad, state, _ = estimator.estimate(theta, state, jax.random.fold_in(run_key, k))
            return state, grad

        _, grads = jax.lax.scan(window, state, jnp.arange(burn_in + windows_per_sample))
        return jax.tree_util.tree_map(lambda g: g[burn_in:], grads)

    return jax.jit(jax.vmap(sample))


def _window_estimates(estimator, theta, key, num_samples: int, windows_per_sample: int = 1, burn_in: int = 0):
    """``estimate_samples`` before averaging: every window's estimate, leading axes
    ``[num_samples, windows_per_sample]``."""
    num_samples = check_positive_int(num_samples, "num_samples", "e.g. 1000 independent estimates.")
    sampler = window_sampler(estimator, theta, windows_per_sample, burn_in)
    return sampler(jax.random.split(key, num_samples))


def estimate_samples(estimator, theta, key, num_samples: int, windows_per_sample: int = 1, burn_in: int = 0):
    """`num_samples` independent estimates at a fixed `theta`, stacked along a leading axis.

    Each is the mean of `windows_per_sample` consecutive window estimates from a fresh
    `init` (keys `split(key, num_samples)`; window `k` uses `fold_in(run key, k)`),
    after `burn_in` windows that are run and dropped (so that accumulators such as PES's
    `xi` reach their steady state); vmapped over samples, one compiled call.

    Args:
      estimator: any estimator (``init``, ``estimate``).
      theta: the fixed outer parameters.
      key: the samples' keys are ``split(key, num_samples)``.
      num_samples: independent samples.
      windows_per_sample: consecutive windows averaged into each sample.
      burn_in: windows run and dropped before them.

    Returns:
      The samples: theta's structure with a leading axis `[num_samples]`.
    """
    windows = _window_estimates(estimator, theta, key, num_samples, windows_per_sample, burn_in)
    return jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=1), windows)


def _host_flat(tree, leading: int = 0) -> np.ndarray:
    """``tree``'s leaves as one host array, raveled in ``ravel_pytree``'s order (and its dtype promotion)
    after ``leading`` shared axes: ``[*leading axes, p]``. Host copies, so the statistics below compile
    nothing (as eager ``jnp`` operations, each new shape of samples compiled ~35 of them: ~0.8 s a call)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    shape = leaves[0].shape[:leading]
    return np.concatenate([leaf.reshape(*shape, -1) for leaf in leaves], axis=leading)


def _host_unflat(flat: np.ndarray, like):
    """``_host_flat``'s inverse on ``like``'s structure, shapes and dtypes (as jax arrays)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    leaves = [np.asarray(leaf) for leaf in leaves]  # (a Python float leaf has no dtype)
    sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
    parts = np.split(flat, sizes)
    return treedef.unflatten(
        [jnp.asarray(part.reshape(leaf.shape).astype(leaf.dtype)) for part, leaf in zip(parts, leaves)]
    )


def _flat_error(reference_error, reference_samples, exact_flat: np.ndarray) -> np.ndarray:
    """The reference's standard error, flat: given, or from its samples (``std / sqrt(n)``); zeros if neither."""
    if reference_error is not None and reference_samples is not None:
        raise BadValue("pass `reference_error` or `reference_samples`, not both (the error is computed from samples).")
    if reference_samples is not None:
        flat = _host_flat(reference_samples, leading=1)
        if flat.shape[0] < 2:
            raise BadValue(
                f"`reference_samples` holds {flat.shape[0]} sample; its standard error needs at least 2 "
                "(stack the per-episode gradients along a leading axis)."
            )
        return np.std(flat, axis=0, ddof=1) / np.sqrt(flat.shape[0])
    if reference_error is None:
        return np.zeros_like(exact_flat)
    error = _host_flat(reference_error)
    if error.shape != exact_flat.shape:
        raise BadValue(
            f"`reference_error` has {error.size} entries but the reference has {exact_flat.size}; pass the standard "
            "error of each component of `exact` (the same structure as theta)."
        )
    return np.abs(error).astype(exact_flat.dtype)


def gradient_quality(
    estimator,
    theta,
    key,
    num_samples: int,
    exact=None,
    windows_per_sample: int = 1,
    *,
    reference_error=None,
    reference_samples=None,
) -> GradientQuality:
    r"""Bias, variance, cosine to the reference gradient and signal-to-noise ratio of `estimator` at `theta`.

    `theta` is fixed. Sample $i$ is the mean of ``windows_per_sample``
    consecutive window estimates of a fresh estimator state (``estimate_samples``: staggered
    workers, fresh episodes).

    A reference averaged over finitely many episodes is itself noisy: pass its standard error
    (``reference_error``) or the samples it is the mean of (``reference_samples``) and
    ``bias_z`` counts it, $z_j = |\bar g_j - g_j| / \sqrt{s_j^2/n + e_j^2}$. Without it a
    noisy reference makes even the exact estimator read as biased. A warning says when the
    reference's error is at least the estimator's own standard error, i.e. when it, not the
    estimator's samples, limits the bias that can be detected.

    For an estimator whose windows only average to the episode gradient over a whole
    episode (``rtrl``, ``truncated_bptt`` with staggered workers), set
    ``windows_per_sample`` so the windows cover whole episodes.

    Args:
      estimator: any estimator (``init``, ``estimate``).
      theta: the fixed outer parameters.
      key: the samples' keys (``estimate_samples``).
      num_samples: $n$, independent samples.
      exact: the reference gradient $g$ (theta's structure), e.g.
        ``unroll.exact_gradient(system, theta, key, num_episodes)``; default: the mean of
        ``reference_samples``.
      windows_per_sample: $w$, consecutive windows averaged into each sample.
      reference_error: the standard error $e$ of each component of ``exact`` (theta's structure).
      reference_samples: the independent samples ``exact`` is (or is to be) the mean of, stacked along a
        leading axis; their standard error is $e$.

    Returns:
      A ``GradientQuality``.
    """
    if exact is None and reference_samples is None:  # before sampling; quality_of_windows takes the mean
        raise BadValue("pass the reference gradient `exact` (or `reference_samples`, whose mean is it).")
    windows = _window_estimates(estimator, theta, key, num_samples, windows_per_sample)
    return quality_of_windows(windows, exact, reference_error=reference_error, reference_samples=reference_samples)


def quality_of_windows(windows, exact=None, *, reference_error=None, reference_samples=None) -> GradientQuality:
    """`gradient_quality`'s statistics of window estimates already taken, against `exact`.

    The estimates are `window_sampler`'s output, leading axes `[num_samples, windows_per_sample]`.

    Args:
      windows: the window estimates, theta's structure with two leading axes.
      exact: the reference gradient (default: the mean of `reference_samples`).
      reference_error: its standard error per component.
      reference_samples: the samples it is the mean of.

    Returns:
      A `GradientQuality`; it warns when the reference's standard error limits the bias that can be detected.
    """
    import warnings

    if exact is None:
        if reference_samples is None:
            raise BadValue("pass the reference gradient `exact` (or `reference_samples`, whose mean is it).")
        exact = jax.tree_util.tree_map(lambda s: np.mean(np.asarray(s), axis=0), reference_samples)
    # on the host (numpy): a few thousand numbers, and no compile for each new number of samples
    exact_flat = _host_flat(exact)
    error = _flat_error(reference_error, reference_samples, exact_flat)
    per_window = _host_flat(windows, leading=2)  # [n, w, p]
    num_samples = per_window.shape[0]
    samples = np.mean(per_window, axis=1)
    mean = np.mean(samples, axis=0)
    bias = mean - exact_flat
    std = np.std(samples, axis=0)
    standard_error = std / np.sqrt(num_samples)
    combined = np.sqrt(standard_error**2 + error**2)
    # a bias at rounding level is none, whatever its spread (which is rounding too)
    rounding = 1e3 * np.finfo(samples.dtype).eps * (np.linalg.norm(exact_flat) + np.linalg.norm(mean))
    visible = np.abs(bias) > rounding
    with np.errstate(divide="ignore", invalid="ignore"):  # masked: z is 0 where the bias is not visible
        z = np.where(visible, np.abs(bias) / np.where(combined > 0, combined, 0.0), 0.0)
    error_norm, own_norm = float(np.linalg.norm(error)), float(np.linalg.norm(standard_error))
    if error_norm > float(rounding) and error_norm >= own_norm:  # (a deterministic reference's is rounding)
        warnings.warn(
            f"gradient_quality: the reference's standard error (norm {error_norm:.3g}) is at least the estimator's "
            f"own ({own_norm:.3g}), so it limits the bias that can be detected (about 4 x "
            f"{float(np.linalg.norm(combined)):.3g} in norm); average the reference over more episodes.",
            stacklevel=2,
        )
    variance = np.mean(np.sum((samples - mean) ** 2, axis=1))
    window_variance = np.mean(np.sum((per_window - mean) ** 2, axis=2))
    unit = lambda v: v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-30)
    signal = float(np.sum(mean**2))
    exact_norm = float(np.linalg.norm(exact_flat))
    return GradientQuality(
        bias=_host_unflat(bias, exact),
        bias_norm=float(np.linalg.norm(bias)),
        bias_z=float(np.max(z)),
        variance=float(variance),
        mean_cosine=float(np.mean(unit(samples) @ unit(exact_flat))),
        cosine_of_mean=float(unit(mean) @ unit(exact_flat)),
        snr=signal / float(variance) if variance > 0 else float("inf"),
        samples=jnp.asarray(samples),
        relative_bias=_ratio(math.sqrt(max(float(np.sum(bias**2) - np.sum(combined**2)), 0.0)), exact_norm),
        window_snr=signal / float(window_variance) if window_variance > 0 else float("inf"),
        reference_error=error_norm,
    )


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, with ``0 / 0 = 0`` and ``x / 0 = inf``."""
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator == 0 else float("inf")


class HorizonGradients(NamedTuple):
    r"""The exact gradient and an estimator's as the horizon grows (`gradient_vs_horizon`).

    Every field but `horizons` holds one value per horizon, an array `[len(horizons)]`.

    Attributes:
      horizons: the horizons $T$.
      loss: the mean episode loss.
      exact_norm_median: the norm of each episode's exact gradient, median over episodes.
      exact_norm_max: the same, max over episodes.
      exact_variance: the variance over episodes of the exact gradient, $\frac1E \sum_e |g_e - \bar g|^2$.
      estimator_norm_median: with an estimator, the median norm of its estimates; else `None`.
      estimator_variance: with an estimator, the variance of its estimates; else `None`.
    """

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
    """The exact gradient and optionally an estimator's as the horizon grows.

    The exact gradient is full BPTT of each episode (`num_episodes` keys), the estimator's from
    `num_samples` samples of `estimate_samples`. One compiled computation per horizon (shapes
    change with it).

    Args:
      make_system: `make_system(horizon) -> System`.
      theta: the outer parameters, fixed.
      key: the episodes' keys are `split(key, num_episodes)`; the estimator's samples use `fold_in(key, 1)`.
      horizons: the horizons $T$ to measure at, ints.
      num_episodes: episodes of the exact gradient per horizon.
      make_estimator: `make_estimator(system) -> estimator`, or `None` for the exact gradient only.
      num_samples: samples of the estimator per horizon.
      windows_per_sample: consecutive windows averaged into each of its samples.

    Returns:
      A `HorizonGradients`.
    """
    from jax.flatten_util import ravel_pytree

    from unroll._exact import episode_loss

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
    r"""The mean episode loss along a line $\theta + a d$ through theta, per horizon, raw and ES-smoothed.

    The loss is taken at $\theta + a d$ for every $a$ in `offsets` and every horizon (the rugged
    landscapes of Metz et al. 2021), and with `sigma` the ES-smoothed loss
    $\mathbb E_\epsilon L(\theta + a d + \sigma \epsilon)$ beside it.

    Args:
      make_system: `make_system(horizon) -> System`.
      theta: the point the line goes through.
      direction: $d$, theta's structure.
      key: the episodes' keys are `split(key, num_episodes)`; the perturbations are drawn from `fold_in(key, 1)`.
      horizons: the horizons to measure at, ints.
      offsets: the $a$s.
      num_episodes: episodes averaged into each loss.
      sigma: the smoothing scale $\sigma$, or `None` for no smoothed loss.
      num_perturbations: antithetic Gaussian draws $\epsilon$ (common to all points) of the smoothed loss.

    Returns:
      `(losses, smoothed)`, each `[len(horizons), len(offsets)]`; `smoothed` is None without `sigma`.
    """
    from jax.flatten_util import ravel_pytree

    from unroll._exact import episode_loss

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
    """A markdown table of `{estimator name: GradientQuality}`, one row per estimator.

    Args:
      qualities: `{estimator name: GradientQuality}`.

    Returns:
      The table's text: bias norm, bias in standard errors (max z), variance, mean cosine, cosine of mean and SNR.
    """
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
