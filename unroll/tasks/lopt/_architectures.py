r"""Learned-optimizer architectures: pure functions on a flat parameter vector
(``Architecture``), how that vector splits into tensors (``Layout``), and the three
architectures of ``ARCHITECTURES``."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import check_positive_float, check_positive_int

DECAYS = (0.5, 0.9, 0.99)
"""The momentum decays $b$ of the MLP optimizer's features (``mlp_optimizer``)."""
_NUM_FEATURES = 2 + len(DECAYS)


def sgd_theta(hidden: int = 32, scale: float = 1.0, seed: int = 0, dtype=jnp.float32) -> dict:
    r"""Learned-optimizer weights equal to SGD with learning rate $\mathrm{lr} \cdot \mathrm{scale}$.

    The hidden path's input weights are random (so meta-gradients reach them), its output
    weights zero; the linear skip from the gradient is ``scale``.

    Args:
      hidden: the hidden layer's width $H$.
      scale: the skip weight $c$ on the gradient: the update is $c\,g$.
      seed: draws the hidden layer's input weights.
      dtype: the arrays' dtype.

    Returns:
      theta for ``mlp_optimizer(hidden=hidden)``: a dict with ``W1`` ($[5, H]$), ``b1``
      ($[H]$), ``W_out`` ($[H + 5]$) and ``b_out`` (a scalar).
    """
    key = jax.random.key(seed)
    return {
        "W1": jax.random.normal(key, (_NUM_FEATURES, hidden), dtype) / np.sqrt(_NUM_FEATURES),
        "b1": jnp.zeros(hidden, dtype),
        "W_out": jnp.zeros(hidden + _NUM_FEATURES, dtype).at[hidden].set(scale),
        "b_out": jnp.zeros((), dtype),
    }


def learned_update(theta: dict, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""The MLP optimizer's update $u$ for every parameter.

    $u = W_\mathrm{out}[{:}H] \cdot \mathrm{relu}(W_1 \tilde f + b_1) + W_\mathrm{out}[H{:}] \cdot f
    + b_\mathrm{out}$, with $\tilde f$ the features divided by their root mean square over
    the parameters.

    Args:
      theta: the MLP's weights (``sgd_theta``'s keys).
      features: $[P, F]$, one row of features $f$ per parameter.
      mask: $[P]$, 1.0 for the parameters that exist (see ``Layout``); ``None``: all.

    Returns:
      $u$, $[P]$.
    """
    hidden = theta["W1"].shape[1]
    rms = _rms(features, mask)
    h = jax.nn.relu((features / rms) @ theta["W1"] + theta["b1"])
    return h @ theta["W_out"][:hidden] + features @ theta["W_out"][hidden:] + theta["b_out"]


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


def sizes_layout(sizes) -> Layout:
    """One group per tensor size, in order.

    Args:
      sizes: the tensors' numbers of parameters, in the flat vector's order.

    Returns:
      a ``Layout`` with ``len(sizes)`` groups and no mask.
    """
    return Layout(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes), len(sizes))


def pytree_layout(tree) -> Layout:
    """One group per leaf of ``tree``, in ``ravel_pytree`` order.

    Args:
      tree: a pytree of arrays (the parameters).

    Returns:
      a ``Layout`` with one group per leaf and no mask.
    """
    return sizes_layout([int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


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
    r"""(a) The per-parameter MLP of the module docstring.

    Features $f = [g, m_{0.5}, m_{0.9}, m_{0.99}, w]$ (momenta at ``DECAYS``), update
    $w \leftarrow w - \mathrm{lr}\, u$ with $u$ from ``learned_update``.

    Args:
      learning_rate: $\mathrm{lr}$, positive.
      hidden: the hidden layer's width $H$.

    Returns:
      the ``"mlp"`` ``Architecture``; its ``init_theta`` is SGD with learning rate
      $\mathrm{lr}$ (``sgd_theta``).
    """
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


BETA1 = (0.5, 0.9, 0.99)
"""The momentum decays of the Adam-feature MLP (``adam_mlp_optimizer``)."""
BETA2 = (0.99, 0.999)
"""The second-moment decays of the Adam-feature MLP (``adam_mlp_optimizer``)."""
TIMESCALES = (3, 10, 30, 100, 300, 1000, 3000)
r"""The training-progress features $\tanh(t / \tau)$, one per $\tau$."""
_ADAM_EPS = 1e-8
_NUM_ADAM_FEATURES = 1 + len(BETA1) + len(BETA2) + len(BETA1) * len(BETA2) + 1
_ADAM_INDEX = 1 + len(BETA1) + len(BETA2) + BETA1.index(0.9) * len(BETA2) + BETA2.index(0.999)


def adam_mlp_optimizer(learning_rate: float = 1e-2, hidden: int = 32, magnitude_scale: float = 0.1) -> Architecture:
    r"""(b) A per-parameter MLP on Adam's features (after Metz et al. 2022's small
    per-parameter learned optimizers).

    Per parameter, with bias-corrected moments $\hat m_b = m_b / (1 - b^{t+1})$
    ($m_b \leftarrow b\, m_b + (1 - b)\, g$, $b$ in ``BETA1``) and $\hat v_c$ (of $g^2$,
    $c$ in ``BETA2``), the features are

    $$x = [g,\ \hat m_b\ (3),\ \sqrt{\hat v_c}\ (2),\ \hat m_b / (\sqrt{\hat v_c} + \epsilon)\ (6),\ w]$$

    and, shared by all parameters, $p = \tanh(t / \tau)$ for $\tau$ in ``TIMESCALES``. The
    hidden layer reads $x$ divided by its root mean square over the parameters (scale
    free) and $p$: $h = \mathrm{relu}([x / \mathrm{rms}(x), p]\, W_1 + b_1)$. Two heads
    give a direction and a log-magnitude, each a hidden path plus a linear skip from the
    raw $x$:

    $$d = h \cdot W_d[{:}H] + x \cdot W_d[H{:}] + b_d, \quad
    a = h \cdot W_a[{:}H] + x \cdot W_a[H{:}] + b_a,$$

    $$\mathrm{update} = -d\, \exp(\mathrm{magnitude\_scale} \cdot a)\, \exp(\mathrm{log\_step}).$$

    Args:
      learning_rate: Adam's learning rate at the start ($\exp(\mathrm{log\_step})$), positive.
      hidden: the hidden layer's width $H$.
      magnitude_scale: the log-magnitude head's scale, positive.

    Returns:
      the ``"adam-mlp"`` ``Architecture``. Its ``init_theta`` is Adam ($\beta_1 = 0.9$,
      $\beta_2 = 0.999$, $\epsilon = 10^{-8}$) with ``learning_rate``: the direction head
      is the skip from $\hat m_{0.9} / (\sqrt{\hat v_{0.999}} + \epsilon)$ alone, the
      magnitude head is zero and $\mathrm{log\_step} = \log \mathrm{learning\_rate}$, so
      meta-training starts at parity with Adam.
    """
    learning_rate = check_positive_float(learning_rate, "learning_rate", "e.g. learning_rate=1e-2")
    hidden = check_positive_int(hidden, "hidden")
    magnitude_scale = check_positive_float(magnitude_scale, "magnitude_scale", "e.g. magnitude_scale=0.1")
    num_inputs = _NUM_ADAM_FEATURES + len(TIMESCALES)

    def init_theta(seed=0, dtype=jnp.float32):
        key = jax.random.key(seed)
        heads = jnp.zeros(hidden + _NUM_ADAM_FEATURES, dtype)
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
        ratios = (m_hat[:, None] / (root[None] + _ADAM_EPS)).reshape(-1, grad.shape[0])
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
    r"""(c) A hyperparameter controller: SGD with momentum whose learning rate and momentum
    each layer (``Layout`` group) gets from a small network of training features.

    For group $k$ at step $t$, with $g_k$ and $w_k$ its gradient and parameters,

    $$z_k = [\log_{10} \mathrm{rms}(g_k),\ \log_{10} \mathrm{rms}(w_k),\ \tanh(t / \tau)\
    \text{for } \tau \text{ in TIMESCALES}],$$

    $$(a_k, c_k) = \tanh(z_k W_1 + b_1)\, W_\mathrm{out} + b_\mathrm{out},$$

    $$\mathrm{lr}_k = \mathrm{learning\_rate}\, e^{a_k}, \quad
    \mu_k = \sigma(\mathrm{logit}(\mathrm{momentum}) + c_k),$$

    $$v \leftarrow \mu_k v + g, \quad w \leftarrow w - \mathrm{lr}_k v.$$

    Args:
      learning_rate: the base learning rate, positive.
      momentum: the base momentum, in $[0, 1)$.
      hidden: the network's hidden width.

    Returns:
      the ``"controller"`` ``Architecture``; its ``init_theta`` ($W_\mathrm{out} = 0$,
      $b_\mathrm{out} = 0$) is heavy-ball SGD with ``learning_rate`` and ``momentum`` in
      every layer.
    """
    learning_rate = check_positive_float(learning_rate, "learning_rate", "e.g. learning_rate=0.1")
    if not 0 <= momentum < 1:
        raise BadValue(f"`momentum`={momentum!r} must lie in [0, 1); e.g. momentum=0.9.")
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
"""The learned-optimizer architectures by name: their constructors."""


def get_architecture(name: str | Architecture, **config) -> Architecture:
    """The architecture called ``name`` with ``config``.

    Args:
      name: one of ``ARCHITECTURES``, or an ``Architecture`` (returned as it is).
      **config: the constructor's keyword arguments (e.g. ``learning_rate``, ``hidden``).

    Returns:
      the ``Architecture``.
    """
    if isinstance(name, Architecture):
        return name
    if name not in ARCHITECTURES:
        raise BadValue(
            f"`architecture`={name!r} is not a learned-optimizer architecture; choose one of {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[name](**config)
