"""Learned optimizers (Andrychowicz et al. 2016; Wichrowska et al. 2017; Metz et al. 2019):
a per-parameter MLP that maps each inner parameter's features to its update, meta-trained
through the inner training run.

Features of inner parameter ``w_i`` at step ``t``: the gradient ``g``, momenta
``m_b = b m_b + (1 - b) g`` at decays ``b`` = 0.5, 0.9, 0.99, and ``w_i`` itself
(``[g, m_0.5, m_0.9, m_0.99, w]``). The update is

    u = W_out[:H] . relu(W_1 f~ + b_1) + W_out[H:] . f + b_out,    w <- w - lr u

with ``f~`` the features divided by their root mean square over all parameters (scale
free) and ``f`` the raw features (a linear skip path). With ``W_out[:H] = 0``,
``W_out[H:] = (c, 0, 0, 0, 0)`` and ``b_out = 0`` this is SGD with learning rate ``lr c``
(``sgd_theta``), where meta-training starts by default.

That is architecture (a), ``"mlp"``. ``ARCHITECTURES`` also has (b) ``"adam-mlp"``, a
per-parameter MLP on Adam's features (bias-corrected momenta and second moments, their
ratios, training progress) with a direction and a log-magnitude head, initialized at
Adam; and (c) ``"controller"``, a small network that sets each layer's learning rate and
momentum from training features. Each is an ``Architecture`` of pure functions on a flat
parameter vector; ``as_optax(theta, architecture)`` exports a meta-trained one as an
``optax.GradientTransformation`` on any pytree, and ``save`` / ``load`` (``read``) store it
in a ``.npz`` with its architecture and settings.

Inner problems (``inner_problem``, built in ``unroll.tasks.inner``): ``"digits"`` (a
64-32-10 tanh MLP on scikit-learn's digits, minibatches of 64, a fresh random init per
episode), ``"quadratic"`` (a random 20-dimensional quadratic ``0.5 w^T A w`` per episode,
eigenvalues log-uniform in [0.01, 1]), ``"digits-mlp-family"`` (MLPs whose depth, widths,
activation, init scale and batch size are drawn per episode, padded to the widest with a
``Layout.mask``) and ``"digits-conv"`` (a small convolutional network, a held-out
architecture). The step loss is the inner training loss at the current parameters (the
minibatch loss for digits) through the task's loss normalizer: capped at its ceiling, and
a run that passes it freezes (``learned_optimizer``). ``baseline_optimizer`` and
``tune_baseline`` give Adam (constant or cosine) and SGD with momentum on the same tasks,
tuned by grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from unroll._system import System, check_positive_float, check_positive_int
from unroll.task import Task, adam_cosine, standard_settings
from unroll.tasks import inner
from unroll.tasks.evaluation import episode_evaluator

DECAYS = (0.5, 0.9, 0.99)
NUM_FEATURES = 2 + len(DECAYS)
PROBLEMS = ("digits", "quadratic", "digits-mlp-family", "digits-conv")


def sgd_theta(hidden: int = 32, scale: float = 1.0, seed: int = 0, dtype=jnp.float32) -> dict:
    """Learned-optimizer weights equal to SGD with learning rate ``lr * scale``; the hidden
    path's input weights are random (so meta-gradients reach them), its output weights zero."""
    key = jax.random.key(seed)
    return {
        "W1": jax.random.normal(key, (NUM_FEATURES, hidden), dtype) / np.sqrt(NUM_FEATURES),
        "b1": jnp.zeros(hidden, dtype),
        "W_out": jnp.zeros(hidden + NUM_FEATURES, dtype).at[hidden].set(scale),
        "b_out": jnp.zeros((), dtype),
    }


def learned_update(theta: dict, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``u`` for every parameter: ``features`` is ``[P, F]`` (``mask``: see ``Layout``)."""
    hidden = theta["W1"].shape[1]
    rms = _rms(features, mask)
    h = jax.nn.relu((features / rms) @ theta["W1"] + theta["b1"])
    return h @ theta["W_out"][:hidden] + features @ theta["W_out"][hidden:] + theta["b_out"]


# --------------------------------------------------------------------------- architectures


class Layout(NamedTuple):
    """How the flat inner parameter vector splits into tensors ("layers"): ``groups[i]``
    is the tensor of parameter ``i`` (``0 <= groups < num_groups``). Per-layer optimizers
    (the controller) read it; the per-parameter ones ignore it. ``mask`` (``[P]``, 1.0 or
    0.0; ``None``: all 1) marks the parameters that exist: the padding of a task family's
    narrower members (``unroll.tasks.inner.digits_mlp_family``) counts in no statistic an
    optimizer takes over parameters, and gets no update."""

    groups: np.ndarray
    num_groups: int
    mask: jax.Array | None = None


def _rms(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Root mean square of ``x`` (``[P, F]``) over the parameters (axis 0) that ``mask`` keeps."""
    if mask is None:
        return jnp.sqrt(jnp.mean(x**2, axis=0) + 1e-12)
    return jnp.sqrt(jnp.sum(mask[:, None] * x**2, axis=0) / jnp.maximum(jnp.sum(mask), 1) + 1e-12)


def _layout(sizes) -> Layout:
    return Layout(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes), len(sizes))


def single_layout(num_params: int) -> Layout:
    return _layout([num_params])


def pytree_layout(tree) -> Layout:
    """One group per leaf of ``tree``, in ``ravel_pytree`` order."""
    return _layout([int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


class Architecture(NamedTuple):
    """A learned optimizer's form: pure functions on a flat parameter vector, as optax has
    them on pytrees.

    * ``init_theta(seed=0, dtype) -> theta``: meta-parameters (a dict of arrays) at the
      architecture's baseline (SGD, Adam, SGD with momentum; ``seed`` draws the hidden
      layer's input weights, whose output weights start at zero);
    * ``init_state(num_params, dtype) -> state``: the per-parameter optimizer state;
    * ``update(theta, grad, state, params, t, layout) -> (updates, state)``: the next
      iterate is ``params + updates``; ``t`` counts steps from 0.

    ``name`` and ``config`` (the settings that fix the form: learning rate, widths)
    identify it in a saved file (``save`` / ``load``)."""

    name: str
    config: dict
    init_theta: Callable
    init_state: Callable
    update: Callable


def mlp_optimizer(learning_rate: float = 0.1, hidden: int = 32) -> Architecture:
    """(a) The per-parameter MLP of the module docstring: features ``[g, m_0.5, m_0.9,
    m_0.99, w]``, ``w <- w - lr u``; ``init_theta`` is SGD with learning rate ``lr``."""
    learning_rate = check_positive_float(learning_rate, "learning_rate", "e.g. learning_rate=0.1")
    hidden = check_positive_int(hidden, "hidden")
    decays = DECAYS

    def update(theta, grad, momenta, params, t, layout):
        b = jnp.asarray(decays, grad.dtype)[:, None]
        momenta = b * momenta + (1 - b) * grad
        features = jnp.concatenate([grad[:, None], momenta.T, params[:, None]], axis=1)
        return -learning_rate * learned_update(theta, features, layout.mask), momenta

    return Architecture(
        "mlp",
        {"learning_rate": learning_rate, "hidden": hidden},
        lambda seed=0, dtype=jnp.float32: sgd_theta(hidden, 1.0, seed, dtype),
        lambda num_params, dtype=jnp.float32: jnp.zeros((len(decays), num_params), dtype),
        update,
    )


BETA1 = (0.5, 0.9, 0.99)  # momentum decays of the Adam-feature MLP
BETA2 = (0.99, 0.999)  # second-moment decays
TIMESCALES = (3, 10, 30, 100, 300, 1000, 3000)  # training-progress features tanh(t / tau)
ADAM_EPS = 1e-8
NUM_ADAM_FEATURES = 1 + len(BETA1) + len(BETA2) + len(BETA1) * len(BETA2) + 1
_ADAM_INDEX = 1 + len(BETA1) + len(BETA2) + BETA1.index(0.9) * len(BETA2) + BETA2.index(0.999)


def adam_mlp_optimizer(learning_rate: float = 1e-2, hidden: int = 32, magnitude_scale: float = 0.1) -> Architecture:
    """(b) A per-parameter MLP on Adam's features (after Metz et al. 2022's small
    per-parameter learned optimizers). Per parameter, with bias-corrected moments
    ``m^_b = m_b / (1 - b^(t+1))`` (``m_b = b m_b + (1 - b) g``, ``b`` in ``BETA1``) and
    ``v^_c`` (of ``g^2``, ``c`` in ``BETA2``), the features are

        x = [g, m^_b (3), sqrt(v^_c) (2), m^_b / (sqrt(v^_c) + eps) (6), w]

    and, shared by all parameters, ``p = tanh(t / tau)`` for ``tau`` in ``TIMESCALES``. The
    hidden layer reads ``x`` divided by its root mean square over the parameters (scale
    free) and ``p``: ``h = relu([x / rms(x), p] W_1 + b_1)``. Two heads give a direction
    and a log-magnitude, each a hidden path plus a linear skip from the raw ``x``:

        d = h . W_d[:H] + x . W_d[H:] + b_d,   a = h . W_a[:H] + x . W_a[H:] + b_a,
        update = -d exp(magnitude_scale * a) exp(log_step).

    ``init_theta`` is Adam (b1 0.9, b2 0.999, eps 1e-8) with ``learning_rate``: the
    direction head is the skip from ``m^_0.9 / (sqrt(v^_0.999) + eps)`` alone, the
    magnitude head is zero and ``log_step = log(learning_rate)``, so meta-training starts
    at parity with Adam."""
    learning_rate = check_positive_float(learning_rate, "learning_rate", "e.g. learning_rate=1e-2")
    hidden = check_positive_int(hidden, "hidden")
    magnitude_scale = check_positive_float(magnitude_scale, "magnitude_scale", "e.g. magnitude_scale=0.1")
    num_inputs = NUM_ADAM_FEATURES + len(TIMESCALES)

    def init_theta(seed=0, dtype=jnp.float32):
        key = jax.random.key(seed)
        heads = jnp.zeros(hidden + NUM_ADAM_FEATURES, dtype)
        return {
            "W1": jax.random.normal(key, (num_inputs, hidden), dtype) / np.sqrt(num_inputs),
            "b1": jnp.zeros(hidden, dtype),
            "W_direction": heads.at[hidden + _ADAM_INDEX].set(1.0),
            "b_direction": jnp.zeros((), dtype),
            "W_magnitude": heads,
            "b_magnitude": jnp.zeros((), dtype),
            "log_step": jnp.asarray(np.log(learning_rate), dtype),
        }

    def init_state(num_params, dtype=jnp.float32):
        return jnp.zeros((len(BETA1), num_params), dtype), jnp.zeros((len(BETA2), num_params), dtype)

    def update(theta, grad, state, params, t, layout):
        m, v = state
        b1, b2 = (jnp.asarray(b, grad.dtype)[:, None] for b in (BETA1, BETA2))
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        count = jnp.asarray(t, grad.dtype) + 1
        m_hat, v_hat = m / (1 - b1**count), v / (1 - b2**count)
        positive = v_hat > 0  # sqrt(v) with a zero derivative at v = 0 (a pixel never lit): no inf * 0
        root = jnp.where(positive, jnp.sqrt(jnp.where(positive, v_hat, 1)), 0)
        ratios = (m_hat[:, None] / (root[None] + ADAM_EPS)).reshape(-1, grad.shape[0])
        x = jnp.concatenate([grad[None], m_hat, root, ratios, params[None]]).T  # [P, F]
        progress = jnp.tanh((count - 1) / jnp.asarray(TIMESCALES, grad.dtype))
        inputs = jnp.concatenate(
            [x / _rms(x, layout.mask), jnp.broadcast_to(progress, (x.shape[0], len(TIMESCALES)))], axis=1
        )
        h = jax.nn.relu(inputs @ theta["W1"] + theta["b1"])
        head = lambda w, b: h @ w[:hidden] + x @ w[hidden:] + b
        direction = head(theta["W_direction"], theta["b_direction"])
        magnitude = head(theta["W_magnitude"], theta["b_magnitude"])
        return -direction * jnp.exp(magnitude_scale * magnitude) * jnp.exp(theta["log_step"]), (m, v)

    config = {"learning_rate": learning_rate, "hidden": hidden, "magnitude_scale": magnitude_scale}
    return Architecture("adam-mlp", config, init_theta, init_state, update)


def controller_optimizer(learning_rate: float = 0.1, momentum: float = 0.9, hidden: int = 16) -> Architecture:
    """(c) A hyperparameter controller: SGD with momentum whose learning rate and momentum
    each layer (``Layout`` group) gets from a small network of training features. For
    group ``k`` at step ``t``, with ``g_k`` and ``w_k`` its gradient and parameters,

        z_k = [log10 rms(g_k), log10 rms(w_k), tanh(t / tau) for tau in TIMESCALES],
        (a_k, c_k) = tanh(z_k W_1 + b_1) W_out + b_out,
        lr_k = learning_rate exp(a_k),  mu_k = sigmoid(logit(momentum) + c_k),
        v <- mu_k v + g,  w <- w - lr_k v.

    ``init_theta`` (``W_out = 0``, ``b_out = 0``) is heavy-ball SGD with ``learning_rate``
    and ``momentum`` in every layer."""
    learning_rate = check_positive_float(learning_rate, "learning_rate", "e.g. learning_rate=0.1")
    if not 0 <= momentum < 1:
        raise ValueError(f"`momentum`={momentum!r} must lie in [0, 1); e.g. momentum=0.9.")
    hidden = check_positive_int(hidden, "hidden")
    num_inputs = 2 + len(TIMESCALES)
    logit = float(np.log(momentum / (1 - momentum))) if momentum > 0 else -30.0

    def init_theta(seed=0, dtype=jnp.float32):
        return {
            "W1": jax.random.normal(jax.random.key(seed), (num_inputs, hidden), dtype) / np.sqrt(num_inputs),
            "b1": jnp.zeros(hidden, dtype),
            "W_out": jnp.zeros((hidden, 2), dtype),
            "b_out": jnp.zeros(2, dtype),
        }

    def update(theta, grad, velocity, params, t, layout):
        groups, num_groups = jnp.asarray(layout.groups), layout.num_groups
        weight = jnp.ones_like(grad) if layout.mask is None else layout.mask
        counts = jnp.maximum(jax.ops.segment_sum(weight, groups, num_groups), 1)
        rms = lambda x: jnp.sqrt(jax.ops.segment_sum(weight * x**2, groups, num_groups) / counts + 1e-30)
        progress = jnp.tanh(jnp.asarray(t, grad.dtype) / jnp.asarray(TIMESCALES, grad.dtype))
        z = jnp.concatenate(
            [
                jnp.log10(rms(grad))[:, None],
                jnp.log10(rms(params))[:, None],
                jnp.broadcast_to(progress, (num_groups, len(TIMESCALES))),
            ],
            axis=1,
        )
        out = jnp.tanh(z @ theta["W1"] + theta["b1"]) @ theta["W_out"] + theta["b_out"]
        lr = learning_rate * jnp.exp(out[:, 0])
        mu = jax.nn.sigmoid(logit + out[:, 1])
        velocity = mu[groups] * velocity + grad
        return -lr[groups] * velocity, velocity

    config = {"learning_rate": learning_rate, "momentum": momentum, "hidden": hidden}
    return Architecture(
        "controller", config, init_theta, lambda num_params, dtype=jnp.float32: jnp.zeros(num_params, dtype), update
    )


ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "mlp": mlp_optimizer,
    "adam-mlp": adam_mlp_optimizer,
    "controller": controller_optimizer,
}


def get_architecture(name: str | Architecture, **config) -> Architecture:
    """The architecture called ``name`` (one of ``ARCHITECTURES``) with ``config``; an
    ``Architecture`` is returned as it is."""
    if isinstance(name, Architecture):
        return name
    if name not in ARCHITECTURES:
        raise ValueError(
            f"`architecture`={name!r} is not a learned-optimizer architecture; choose one of {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[name](**config)


class LearnedOptimizerState(NamedTuple):
    """``as_optax``'s state: the step count and the architecture's per-parameter state."""

    count: jax.Array
    inner: object


def as_optax(
    theta: dict, architecture: str | Architecture = "mlp", layout: Layout | None = None
) -> optax.GradientTransformation:
    """The learned optimizer with meta-parameters ``theta`` as an
    ``optax.GradientTransformation`` on any pytree of parameters (raveled to one vector;
    each leaf is one ``Layout`` group). ``update`` needs ``params`` (a feature):
    ``updates, state = opt.update(grads, state, params)``, then
    ``optax.apply_updates(params, updates)``. ``layout`` overrides the groups (e.g.
    ``inner_layout(problem)`` for a flat vector): on the meta-training system's flat
    parameters with its layout, the iterates are its inner step's, bit for bit."""
    arch = get_architecture(architecture)

    def init(params):
        flat, _ = ravel_pytree(params)
        return LearnedOptimizerState(jnp.zeros((), jnp.int32), arch.init_state(flat.size, flat.dtype))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                f"the learned optimizer ({arch.name}) reads the parameters as a feature: call update(grads, state, params)."
            )
        grad, unravel = ravel_pytree(updates)
        flat, _ = ravel_pytree(params)
        groups = pytree_layout(params) if layout is None else layout
        step, inner = arch.update(theta, grad, state.inner, flat, state.count, groups)
        return unravel(step), LearnedOptimizerState(state.count + 1, inner)

    return optax.GradientTransformation(init, update)


FILE_FORMAT = "unroll-learned-optimizer/1"


def save(path: str, theta: dict, architecture: str | Architecture = "mlp") -> None:
    """Writes a learned optimizer to ``path`` (a ``.npz``): one array per entry of
    ``theta`` under ``theta/<name>``, and ``meta``, a JSON string ``{"format":
    "unroll-learned-optimizer/1", "architecture": name, "config": {...}, "dtypes": ...}``.
    ``load(path)`` reads it back as an optax optimizer, ``read(path)`` as ``(theta,
    architecture)``."""
    arch = get_architecture(architecture)
    arrays = {f"theta/{k}": np.asarray(v) for k, v in theta.items()}
    meta = {"format": FILE_FORMAT, "architecture": arch.name, "config": arch.config}
    with open(path, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)


def read(path: str) -> tuple[dict, Architecture]:
    """``(theta, architecture)`` from a file ``save`` wrote (checked to be one)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        if meta.get("format") != FILE_FORMAT:
            raise ValueError(
                f"{path!r} is not a learned optimizer saved by unroll.tasks.lopt.save (format {FILE_FORMAT})."
            )
        theta = {k.removeprefix("theta/"): jnp.asarray(data[k]) for k in data.files if k.startswith("theta/")}
    return theta, get_architecture(meta["architecture"], **meta["config"])


def load(path: str) -> optax.GradientTransformation:
    """The optax optimizer saved at ``path``: ``as_optax(*read(path))``."""
    return as_optax(*read(path))


def inner_problem(
    problem: str | inner.InnerTask, batch_size: int = 64, dim: int = 20, dtype=jnp.float32
) -> inner.InnerTask:
    """The inner task called ``problem`` (one of ``PROBLEMS``; an ``InnerTask`` is returned
    as it is): ``"digits"`` (a 64-32-10 tanh MLP, minibatches of ``batch_size``),
    ``"quadratic"`` (``dim``-d), ``"digits-mlp-family"`` (sampled MLPs) or
    ``"digits-conv"`` (a small convolutional network)."""
    if isinstance(problem, inner.InnerTask):
        return problem
    if problem == "digits":
        return inner.digits_mlp_task((64, 32, 10), batch_size, dtype)
    if problem == "quadratic":
        return inner.quadratic_task(dim, dtype)
    if problem == "digits-mlp-family":
        return inner.digits_mlp_family(dtype)
    if problem == "digits-conv":
        return inner.digits_conv_task(dtype=dtype)
    raise ValueError(f"`problem`={problem!r} is not a known inner problem; choose one of {', '.join(PROBLEMS)}.")


def inner_layout(problem: str | inner.InnerTask, dim: int = 20) -> Layout:
    """The inner problem's tensors (e.g. the digits MLP's weight matrices and biases) in its
    flat order."""
    return _layout(inner_problem(problem, dim=dim).sizes)


META_LOSSES = ("loss", "log")
LOG_FLOOR = 1e-4  # meta_loss="log" scores log(loss + LOG_FLOOR)


class InnerState(NamedTuple):
    """The state of a learned-optimizer system: the inner parameters, the optimizer's
    state, the inner run's key (its task, init and minibatches), ``diverged`` (1.0 once
    the run passed the loss ceiling: its parameters are frozen) and, with
    ``run_lengths``, the step inside the current inner run (``None`` without)."""

    params: jax.Array
    opt_state: object
    key: jax.Array
    diverged: jax.Array
    count: jax.Array | None = None


def _check_run_lengths(run_lengths, horizon: int):
    if run_lengths is None:
        return None
    try:
        low, high = (int(v) for v in run_lengths)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not 1 <= low <= high:
        raise ValueError(
            f"`run_lengths`={run_lengths!r} must be a pair (shortest, longest) of inner-run lengths with "
            "1 <= shortest <= longest, e.g. run_lengths=(100, 2000); None runs one inner run per episode."
        )
    return low, high


def run_length(key, run_lengths: tuple[int, int]) -> jax.Array:
    """The length of the inner run ``key`` starts: ``floor(exp(u))``, ``u`` uniform in
    ``[log shortest, log (longest + 1))`` (log-uniform, as learned_optimization's
    truncation schedules draw them)."""
    low, high = run_lengths
    u = jax.random.uniform(jax.random.fold_in(key, 2), (), jnp.float32, np.log(low), np.log(high + 1))
    return jnp.clip(jnp.floor(jnp.exp(u)).astype(jnp.int32), low, high)


def learned_optimizer(
    problem: str | inner.InnerTask = "digits",
    horizon: int = 200,
    learning_rate: float | None = None,
    hidden: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_tasks: int = 16,
    architecture: str | Architecture = "mlp",
    run_lengths: tuple[int, int] | None = None,
    meta_loss: str = "loss",
):
    """Meta-training a learned optimizer on ``problem`` (``inner_problem``): returns
    ``(system, theta, evaluate)``.

    ``architecture`` is one of ``ARCHITECTURES`` (built with ``learning_rate`` and
    ``hidden`` when given) or any ``Architecture`` (``baseline_optimizer`` ones too);
    theta starts at its baseline (``init_theta(seed)``: SGD for ``"mlp"``, Adam for
    ``"adam-mlp"``, SGD with momentum for ``"controller"``). The state is an
    ``InnerState``. Step ``t`` of an inner run at parameters ``w`` with gradient ``g``:

        w <- w + mask * update(theta, g, state, w, t),   loss_t = L(w; batch_t),

    scored through the task's loss normalizer: once ``loss_t`` is not finite or above the
    task's ``ceiling`` (or the update would make ``w`` non-finite) the run has diverged,
    scores ``ceiling`` at every later step, and its parameters and optimizer state stop
    moving. So every step loss lies in ``[0, ceiling]``: never NaN, and one diverging inner
    run costs a bounded amount, not a whole ES population (its meta-gradient through the
    frozen steps is zero).

    ``run_lengths=(shortest, longest)``: instead of one inner run per episode, the
    episode (``horizon`` steps) is a sequence of inner runs whose lengths are log-uniform
    in that range (``run_length``): when one ends, a fresh task, init and optimizer state
    start inside the same episode (the System interface has one fixed ``horizon``, so a
    length schedule lives in the task). The optimizer's step count is the inner run's.

    ``meta_loss="log"``: the step loss is ``log(loss_t + LOG_FLOOR)`` (a diverged run:
    ``log(ceiling + LOG_FLOOR)``), so halving a small loss counts as much as halving a
    large one; the mean of the raw loss (``"loss"``) is dominated by the early steps, and
    an optimizer meta-trained on it learns to be fast, not to end low.

    ``evaluate`` gives the mean (normalized) step loss over ``num_eval_tasks`` held-out
    tasks (``"objective"``, keys ``split(key(seed + 10_000))``), and, at the final
    parameters, ``final_train_loss`` (the whole training set, ceiling for a diverged
    run), ``diverged`` (the fraction of runs) and, for classifiers,
    ``validation_accuracy`` and ``validation_loss``."""
    horizon = check_positive_int(horizon, "horizon")
    run_lengths = _check_run_lengths(run_lengths, horizon)
    if meta_loss not in META_LOSSES:
        raise ValueError(
            f"`meta_loss`={meta_loss!r} must be 'loss' (the normalized step loss) or 'log' (its logarithm, "
            "log(loss + LOG_FLOOR)); e.g. meta_loss='log'."
        )
    config = {k: v for k, v in (("learning_rate", learning_rate), ("hidden", hidden)) if v is not None}
    arch = get_architecture(architecture, **config)
    task = inner_problem(problem, batch_size, dtype=dtype)
    layout, ceiling = _layout(task.sizes), task.ceiling

    def fresh(key):
        return InnerState(
            task.init(key),
            arch.init_state(task.num_params, dtype),
            key,
            jnp.zeros((), dtype),
            None if run_lengths is None else jnp.zeros((), jnp.int32),
        )

    def step(theta, state, t):
        count = t if run_lengths is None else state.count
        mask = None if task.mask is None else task.mask(state.key)
        value, g = jax.value_and_grad(task.loss)(state.params, state.key, count)
        bad = (state.diverged > 0) | ~jnp.isfinite(value) | (value > ceiling)
        g = jnp.where(bad, 0, g)
        updates, opt_state = arch.update(theta, g, state.opt_state, state.params, count, layout._replace(mask=mask))
        proposed = state.params + (updates if mask is None else mask * updates)
        bad = bad | ~jnp.all(jnp.isfinite(proposed))
        keep = lambda new, old: jnp.where(bad, old, new)
        new = InnerState(
            keep(proposed, state.params),
            jax.tree_util.tree_map(keep, opt_state, state.opt_state),
            state.key,
            jnp.maximum(state.diverged, bad.astype(dtype)),
            None if run_lengths is None else count + 1,
        )
        if run_lengths is not None:  # the inner run ends: the next starts inside the episode
            ended = new.count >= run_length(state.key, run_lengths)
            restart = fresh(jax.random.fold_in(state.key, t))
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(ended, a, b), restart, new)
        score = jnp.where(bad, jnp.asarray(ceiling, dtype), value)
        return new, (jnp.log(score + LOG_FLOOR) if meta_loss == "log" else score)

    system = System(lambda theta, key: fresh(key), step, horizon)
    evaluate = episode_evaluator(
        system, jax.random.key(seed + 10_000), num_eval_tasks, final_metrics=lambda state: final_metrics(task, state)
    )
    return system, arch.init_theta(seed, dtype), evaluate


def final_metrics(task: inner.InnerTask, state: InnerState) -> dict:
    """The task's metrics at an inner run's final parameters, through its normalizer:
    ``final_train_loss`` is the whole training set's loss capped at the ceiling (the
    ceiling for a diverged run); ``diverged`` is 1.0 for a diverged run."""
    metrics = task.metrics(state.params, state.key)
    train = metrics.pop("train_loss")
    capped = jnp.where(jnp.isfinite(train), jnp.minimum(train, task.ceiling), task.ceiling)
    return {
        "final_train_loss": jnp.where(state.diverged > 0, task.ceiling, capped),
        "diverged": state.diverged,
        **metrics,
    }


# --------------------------------------------------------------------------- tuned baselines

BASELINES = ("adam", "adam-cosine", "sgd-momentum")


def baseline_optimizer(name: str, horizon: int | None = None) -> Architecture:
    """A hand-designed optimizer as an ``Architecture`` whose theta is its hyperparameters,
    so it runs in the same system as a learned one and is tuned by a grid over theta
    (``tune_baseline``):

    * ``"adam"``: ``optax.scale_by_adam()`` (b1 0.9, b2 0.999, eps 1e-8) times
      ``-10^log10_learning_rate``;
    * ``"adam-cosine"``: the same with the learning rate cosine-decayed to zero over
      ``horizon`` steps, ``lr_t = lr (1 + cos(pi t / horizon)) / 2``;
    * ``"sgd-momentum"``: heavy ball, ``v <- momentum v + g``, ``w <- w - lr v``.

    theta: ``{"log10_learning_rate": ()}`` (plus ``"momentum"`` for SGD)."""
    if name not in BASELINES:
        raise ValueError(f"`name`={name!r} is not a baseline optimizer; choose one of {', '.join(BASELINES)}.")
    if name == "adam-cosine":
        horizon = check_positive_int(horizon, "horizon", "the cosine schedule decays over it, e.g. horizon=1000")
    if name == "sgd-momentum":

        def update(theta, grad, velocity, params, t, layout):
            velocity = theta["momentum"] * velocity + grad
            return -(10.0 ** theta["log10_learning_rate"]) * velocity, velocity

        return Architecture(
            name,
            {},
            lambda seed=0, dtype=jnp.float32: {
                "log10_learning_rate": jnp.asarray(-1.0, dtype),
                "momentum": jnp.asarray(0.9, dtype),
            },
            lambda num_params, dtype=jnp.float32: jnp.zeros(num_params, dtype),
            update,
        )
    adam = optax.scale_by_adam()

    def update(theta, grad, state, params, t, layout):
        direction, state = adam.update(grad, state)
        lr = 10.0 ** theta["log10_learning_rate"]
        if name == "adam-cosine":
            lr = lr * 0.5 * (1 + jnp.cos(np.pi * jnp.minimum(t, horizon) / horizon))
        return (-lr * direction).astype(grad.dtype), state

    return Architecture(
        name,
        {} if horizon is None else {"horizon": horizon},
        lambda seed=0, dtype=jnp.float32: {"log10_learning_rate": jnp.asarray(-2.0, dtype)},
        lambda num_params, dtype=jnp.float32: adam.init(jnp.zeros(num_params, dtype)),
        update,
    )


def tune_baseline(
    name: str,
    problem: str | inner.InnerTask = "digits",
    horizon: int = 200,
    log10_learning_rates=np.linspace(-4, 0, 17),  # noqa: B008 (read, never written)
    momenta=(0.5, 0.9, 0.99),
    seed: int = 0,
    num_eval_tasks: int = 16,
    measure: str = "final_train_loss",
    dtype=jnp.float32,
) -> dict:
    """A ``baseline_optimizer`` tuned by grid search on the evaluation tasks of
    ``learned_optimizer(problem, horizon, seed=seed, num_eval_tasks=...)`` (the same
    held-out tasks a learned optimizer is scored on): the grid (learning rates, and for
    SGD with momentum every pair with ``momenta``), the ``measure`` at each point, the best
    point and every metric there. Diverged points score the ceiling, never NaN."""
    arch = baseline_optimizer(name, horizon)
    _, _, evaluate = learned_optimizer(
        problem, horizon, seed=seed, num_eval_tasks=num_eval_tasks, dtype=dtype, architecture=arch
    )
    lrs = np.asarray(log10_learning_rates, np.float64)
    if name == "sgd-momentum":
        grid = {
            "log10_learning_rate": np.repeat(lrs, len(momenta)),
            "momentum": np.tile(np.asarray(momenta, np.float64), len(lrs)),
        }
    else:
        grid = {"log10_learning_rate": lrs}
    results = jax.jit(jax.vmap(evaluate))({k: jnp.asarray(v, dtype) for k, v in grid.items()})
    scores = np.asarray(results[measure], np.float64)
    best = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
    return {
        "name": name,
        "horizon": horizon,
        "grid": {k: v.tolist() for k, v in grid.items()},
        "measure": measure,
        "scores": scores.tolist(),
        "best_theta": {k: float(v[best]) for k, v in grid.items()},
        "best": {k: float(v[best]) for k, v in results.items()},
    }


def adam_system(problem: str = "digits", horizon: int = 200, batch_size: int = 64, dtype=jnp.float32) -> System:
    """The same inner training run with Adam (b1 0.9, b2 0.999): theta is ``log10`` of its
    learning rate, so the baseline can be tuned (``adam_baseline``)."""
    task = inner_problem(problem, batch_size, dtype=dtype)
    system, _, _ = learned_optimizer(task, horizon, dtype=dtype, architecture=baseline_optimizer("adam"))
    return System(system.init, lambda theta, state, t: system.step({"log10_learning_rate": theta}, state, t), horizon)


def adam_baseline(
    problem: str = "digits",
    horizon: int = 200,
    log10_learning_rates=np.linspace(-4, 0, 17),  # noqa: B008 (read, never written)
    seed: int = 0,
    num_eval_tasks: int = 16,
    dtype=jnp.float32,
) -> dict:
    """Adam with its learning rate tuned by grid search on the evaluation tasks for the mean
    inner training loss (``tune_baseline("adam", measure="objective")``): the grid's
    objectives, the best ``log10`` learning rate and the metrics there."""
    result = tune_baseline(
        "adam",
        problem,
        horizon,
        log10_learning_rates,
        seed=seed,
        num_eval_tasks=num_eval_tasks,
        measure="objective",
        dtype=dtype,
    )
    return {
        "log10_learning_rates": result["grid"]["log10_learning_rate"],
        "objectives": result["scores"],
        "best_log10_learning_rate": result["best_theta"]["log10_learning_rate"],
        "best": result["best"],
    }


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "lopt-digits": ["pes", "tbptt-10", "es", "full-bptt"],
    "lopt-quadratic": ["pes", "tbptt-10", "es", "full-bptt"],
}


def _lopt_setup(problem: str, horizon: int) -> Task:
    system, theta, evaluate = learned_optimizer(problem, horizon=horizon)
    adam = adam_baseline(problem, horizon=horizon)
    best = adam["best"]["objective"]
    return Task(
        name=f"lopt-{problem}",
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean inner training loss over the run on 16 held-out inner tasks",
            "horizon": horizon,
            "sgd_objective": float(evaluate(theta)["objective"]),
            "adam_tuned_objective": best,
            "adam_best_log10_learning_rate": adam["best_log10_learning_rate"],
            "adam_tuned": adam["best"],
        },
        settings=standard_settings(workers=4, particles=16, sigma=0.01, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS[f"lopt-{problem}"],
        **adam_cosine(3e-3, clip=1.0),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["objective"]) <= best,
    )


def lopt_digits_setup(horizon: int = 200) -> Task:
    """Meta-train a per-parameter MLP optimizer on MLP training on digits (vs tuned Adam)."""
    return _lopt_setup("digits", horizon)


def lopt_quadratic_setup(horizon: int = 100) -> Task:
    """Meta-train a per-parameter MLP optimizer on random 20-d quadratics (vs tuned Adam)."""
    return _lopt_setup("quadratic", horizon)
