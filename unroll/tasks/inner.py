"""Inner problems for meta-learning tasks: scikit-learn's bundled digits (8x8 images, no
download) and a small MLP classifier on them, with parameters as one flat vector."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import MissingExtra

__all__ = [
    "CLASSIFIER_CEILING",
    "CONV_CHANNELS",
    "Digits",
    "FAMILY_ACTIVATIONS",
    "FAMILY_BATCH_SIZES",
    "FAMILY_DEPTHS",
    "FAMILY_INIT_SCALES",
    "FAMILY_WIDTHS",
    "InnerTask",
    "MLP",
    "QUADRATIC_CEILING",
    "digits",
    "digits_conv_task",
    "digits_mlp_family",
    "digits_mlp_task",
    "image_patches",
    "minibatch",
    "mlp",
    "mlp_family_config",
    "quadratic_task",
]


class Digits(NamedTuple):
    """``x_*``: ``[n, 64]`` pixel intensities in ``[0, 1]``; ``y_*``: labels 0-9 (int32)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray


@functools.cache
def digits(num_validation: int = 297, seed: int = 0) -> Digits:
    """The 1797 digits of ``sklearn.datasets.load_digits`` (shipped with scikit-learn),
    shuffled once by ``seed``, the last ``num_validation`` held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is the optional extra `tasks`
        raise MissingExtra(
            "the digits tasks (lopt-digits, the digits inner problems, mlp_hyperparameters) need scikit-learn, "
            "which ships the data and comes with the extra `tasks`: pip install 'unroll[tasks]'."
        ) from err
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x, y = (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int32)
    cut = len(y) - num_validation
    return Digits(x[:cut], y[:cut], x[cut:], y[cut:])


class MLP(NamedTuple):
    """A tanh MLP classifier whose parameters are one flat vector: ``init(key) -> [P]``,
    ``loss(w, x, y)`` (mean cross-entropy), ``accuracy(w, x, y)``."""

    sizes: tuple
    num_params: int

    @property
    def tensor_sizes(self) -> tuple:
        """The sizes of its tensors in flat order: each layer's weight matrix, then its bias."""
        return tuple(n for a, b in zip(self.sizes[:-1], self.sizes[1:]) for n in (a * b, b))

    def _unflatten(self, w):
        layers, offset = [], 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            weight = w[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
            offset += fan_in * fan_out
            layers.append((weight, w[offset : offset + fan_out]))
            offset += fan_out
        return layers

    def init(self, key, dtype=jnp.float32):
        parts = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            key, sub = jax.random.split(key)
            parts += [jax.random.normal(sub, (fan_in * fan_out,), dtype) / np.sqrt(fan_in), jnp.zeros(fan_out, dtype)]
        return jnp.concatenate(parts)

    def logits(self, w, x):
        layers = self._unflatten(w)
        for weight, bias in layers[:-1]:
            x = jnp.tanh(x @ weight + bias)
        weight, bias = layers[-1]
        return x @ weight + bias

    def loss(self, w, x, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(self.logits(w, x)), y[:, None], axis=1))

    def accuracy(self, w, x, y):
        return jnp.mean(jnp.argmax(self.logits(w, x), axis=1) == y)


def mlp(sizes=(64, 32, 10)) -> MLP:
    r"""A tanh MLP's layer sizes and its number of parameters $\sum_l (n_{l-1} n_l + n_l)$.

    Args:
      sizes: the layer widths, input first.

    Returns:
      The `MLP`.
    """
    sizes = tuple(int(s) for s in sizes)
    return MLP(sizes, sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])))


def minibatch(key, t, x, y, batch_size: int):
    """Step ``t``'s minibatch, drawn from ``fold_in(key, t)`` (with replacement)."""
    index = jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, x.shape[0])
    return x[index], y[index]


# --------------------------------------------------------------------------- task families


class InnerTask(NamedTuple):
    """An inner training problem on one flat parameter vector, drawn per episode from the
    episode's key (so ES/PES antithetic copies, which share the key, share the task).

    * ``init(key) -> w_0`` (``[num_params]``);
    * ``loss(w, key, t)``: step ``t``'s minibatch training loss (raw, not normalized);
    * ``mask(key)``: ``[num_params]``, 1.0 for the parameters this episode's network has,
      0.0 for padding (a family with sampled widths is padded to its widest member, so
      every episode has the same shapes and episodes are a ``vmap`` axis); ``None``: all;
    * ``metrics(w, key)``: ``train_loss`` (the whole training set), ``validation_loss``,
      ``validation_accuracy`` (classification only);
    * ``sizes``: the tensors ("layers") of the flat vector, in order (the optimizers'
      ``Layout``);
    * ``ceiling``: the loss normalizer's bound. A step loss above it (or not finite) means
      the run has diverged: it scores ``ceiling`` from then on and its parameters stop
      moving (``unroll.tasks.lopt.learned_optimizer``)."""

    name: str
    num_params: int
    sizes: tuple
    init: Callable
    loss: Callable
    mask: Callable | None
    metrics: Callable
    ceiling: float


# a 10-class classifier whose training loss passed 3 ln 10 (three times chance) has diverged
CLASSIFIER_CEILING = float(3 * np.log(10))
QUADRATIC_CEILING = 100.0  # a random 20-d quadratic starts near 2 (its eigenvalues lie in [0.01, 1])


def _cross_entropy(logits, y, weights=None):
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
    return jnp.mean(nll) if weights is None else jnp.sum(weights * nll) / jnp.sum(weights)


def _classifier_metrics(logits_fn, data: Digits, dtype, features=lambda x: x):
    """``metrics(w, key)`` of a classifier ``logits_fn(w, inputs, key)`` on the digits,
    the inputs ``features(x)`` of the pixels ``x``."""
    x, y = jnp.asarray(features(data.x_train), dtype), jnp.asarray(data.y_train)
    xv, yv = jnp.asarray(features(data.x_validation), dtype), jnp.asarray(data.y_validation)

    def metrics(w, key):
        logits = logits_fn(w, xv, key)
        return {
            "train_loss": _cross_entropy(logits_fn(w, x, key), y),
            "validation_loss": _cross_entropy(logits, yv),
            "validation_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == yv),
        }

    return metrics


def digits_mlp_task(sizes=(64, 32, 10), batch_size: int = 64, dtype=jnp.float32) -> InnerTask:
    """One fixed tanh MLP on digits (``mlp(sizes)``), minibatches of ``batch_size``, a fresh
    init per episode."""
    data, net = digits(), mlp(sizes)
    x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)
    return InnerTask(
        f"digits-mlp{'-'.join(map(str, sizes[1:-1]))}",
        net.num_params,
        net.tensor_sizes,
        lambda key: net.init(jax.random.fold_in(key, 0x7FFFFFFF), dtype),
        lambda w, key, t: net.loss(w, *minibatch(key, t, x, y, batch_size)),
        None,
        _classifier_metrics(lambda w, x, key: net.logits(w, x), data, dtype),
        CLASSIFIER_CEILING,
    )


# the sampled MLP family: each episode draws its network from these
FAMILY_WIDTHS = (8, 16, 32)
FAMILY_DEPTHS = (1, 2)
FAMILY_ACTIVATIONS = ("tanh", "relu", "elu")
FAMILY_INIT_SCALES = (0.5, 2.0)  # log-uniform, times 1 / sqrt(fan-in)
FAMILY_BATCH_SIZES = (16, 32, 64)
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu}


def mlp_family_config(key) -> dict:
    """The network an episode of ``digits_mlp_family`` trains, drawn from ``fold_in(key,
    1)``: ``depth`` (hidden layers), ``widths`` (of each, the second unused at depth 1),
    ``activation`` (an index into ``FAMILY_ACTIVATIONS``), ``init_scale``, ``batch_size``."""
    k = jax.random.split(jax.random.fold_in(key, 1), 5)
    pick = lambda k, options, n=(): jnp.asarray(options)[jax.random.randint(k, n, 0, len(options))]
    low, high = np.log(FAMILY_INIT_SCALES)
    return {
        "depth": pick(k[0], FAMILY_DEPTHS),
        "widths": pick(k[1], FAMILY_WIDTHS, (2,)),
        "activation": jax.random.randint(k[2], (), 0, len(FAMILY_ACTIVATIONS)),
        "init_scale": jnp.exp(jax.random.uniform(k[3], (), jnp.float32, low, high)),
        "batch_size": pick(k[4], FAMILY_BATCH_SIZES),
    }


def digits_mlp_family(dtype=jnp.float32) -> InnerTask:
    """MLPs on digits with a sampled architecture and training setup per episode
    (``mlp_family_config``): 1 or 2 hidden layers of width 8, 16 or 32, tanh, relu or elu,
    init ``N(0, init_scale^2 / fan_in)`` with ``init_scale`` log-uniform in [0.5, 2], and
    minibatches of 16, 32 or 64. Every member is padded to the widest (64-32-32-10, 3466
    parameters): the units a network lacks are multiplied by zero, so its padding gets
    exactly zero gradient, starts at zero, and is masked out of the optimizer
    (``mask``); the loss is that of the unpadded network. A depth-1 network feeds its
    hidden layer straight to the readout (the second layer is all padding)."""
    data = digits()
    x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)
    width, max_batch = max(FAMILY_WIDTHS), max(FAMILY_BATCH_SIZES)
    net = mlp((64, width, width, 10))

    def units(config):
        first = (jnp.arange(width) < config["widths"][0]).astype(dtype)
        deep = (config["depth"] == 2).astype(dtype)
        second = (jnp.arange(width) < config["widths"][1]).astype(dtype) * deep
        return first, second, deep

    def mask_of(config):
        first, second, deep = units(config)
        readout_rows = second + (1 - deep) * first
        parts = [jnp.outer(jnp.ones(64, dtype), first), first, jnp.outer(first, second), second]
        parts += [jnp.outer(readout_rows, jnp.ones(10, dtype)), jnp.ones(10, dtype)]
        return jnp.concatenate([p.reshape(-1) for p in parts])

    def logits(w, x, config):
        first, second, deep = units(config)
        (w1, b1), (w2, b2), (w3, b3) = net._unflatten(w)
        act = lambda z: jax.lax.switch(config["activation"], [_ACTIVATIONS[a] for a in FAMILY_ACTIVATIONS], z)
        h = act(x @ w1 + b1) * first
        h = deep * act(h @ w2 + b2) * second + (1 - deep) * h
        return h @ w3 + b3

    def init(key):
        config = mlp_family_config(key)
        first, second, deep = units(config)
        fan_in = [64.0, jnp.sum(first), deep * jnp.sum(second) + (1 - deep) * jnp.sum(first)]
        keys = jax.random.split(jax.random.fold_in(key, 0x7FFFFFFF), 3)
        parts = []
        for k, fan, (a, b) in zip(keys, fan_in, zip(net.sizes[:-1], net.sizes[1:])):
            scale = (config["init_scale"] / jnp.sqrt(fan)).astype(dtype)
            parts += [scale * jax.random.normal(k, (a * b,), dtype), jnp.zeros(b, dtype)]
        return jnp.concatenate(parts) * mask_of(config)

    def loss(w, key, t):
        config = mlp_family_config(key)
        xb, yb = minibatch(key, t, x, y, max_batch)
        weights = (jnp.arange(max_batch) < config["batch_size"]).astype(dtype)
        return _cross_entropy(logits(w, xb, config), yb, weights)

    return InnerTask(
        "digits-mlp-family",
        net.num_params,
        net.tensor_sizes,
        init,
        loss,
        lambda key: mask_of(mlp_family_config(key)),
        _classifier_metrics(lambda w, x, key: logits(w, x, mlp_family_config(key)), data, dtype),
        CLASSIFIER_CEILING,
    )


CONV_CHANNELS = 8


def image_patches(x: np.ndarray) -> np.ndarray:
    """The 3x3 neighbourhood of every pixel of the 8x8 images ``x`` (``[n, 64]``), zero
    beyond the border: ``[n, 64, 9]`` (a 'SAME' 3x3 convolution is ``patches @ kernel``)."""
    images = np.pad(np.asarray(x).reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    return np.stack([images[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)], axis=-1).reshape(-1, 64, 9)


def digits_conv_task(channels: int = CONV_CHANNELS, batch_size: int = 32, dtype=jnp.float32) -> InnerTask:
    """A small convolutional network on the 8x8 digits, a family the MLP distribution does
    not contain: a 3x3 convolution to ``channels`` maps ('SAME' padding, computed as
    ``image_patches(x) @ kernel``), relu, 2x2 average pooling, and a linear readout of the
    4x4x``channels`` features; init ``N(0, 1 / fan_in)``, minibatches of ``batch_size``."""
    data = digits()
    x, y = jnp.asarray(image_patches(data.x_train), dtype), jnp.asarray(data.y_train)
    features = 16 * channels
    sizes = (9 * channels, channels, features * 10, 10)
    offsets = np.cumsum((0,) + sizes)

    def logits(w, patches):
        kernel, bias, readout, out_bias = (w[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
        h = jax.nn.relu(patches @ kernel.reshape(9, channels) + bias)  # [n, 64, channels]
        h = h.reshape(-1, 4, 2, 4, 2, channels).mean(axis=(2, 4)).reshape(-1, features)
        return h @ readout.reshape(features, 10) + out_bias

    def init(key):
        k1, k2 = jax.random.split(jax.random.fold_in(key, 0x7FFFFFFF))
        return jnp.concatenate(
            [
                jax.random.normal(k1, (sizes[0],), dtype) / 3.0,
                jnp.zeros(channels, dtype),
                jax.random.normal(k2, (sizes[2],), dtype) / float(np.sqrt(features)),
                jnp.zeros(10, dtype),
            ]
        )

    def loss(w, key, t):
        patches, labels = minibatch(key, t, x, y, batch_size)
        return _cross_entropy(logits(w, patches), labels)

    return InnerTask(
        "digits-conv",
        int(offsets[-1]),
        sizes,
        init,
        loss,
        None,
        _classifier_metrics(lambda w, x, key: logits(w, x), data, dtype, image_patches),
        CLASSIFIER_CEILING,
    )


def _quadratic(key, dim: int, dtype):
    """``(A, w_0)`` of the episode's random quadratic."""
    k1, k2, k3 = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, dim), dtype))
    eigenvalues = 10.0 ** jax.random.uniform(k2, (dim,), dtype, -2.0, 0.0)
    return (q * eigenvalues) @ q.T, jax.random.normal(k3, (dim,), dtype)


def quadratic_task(dim: int = 20, dtype=jnp.float32) -> InnerTask:
    """A random ``dim``-dimensional quadratic ``0.5 w^T A w`` per episode, eigenvalues
    log-uniform in [0.01, 1], ``w_0 ~ N(0, I)``; no minibatch noise."""

    def loss(w, key, t):
        a, _ = _quadratic(key, dim, dtype)
        return 0.5 * w @ a @ w

    return InnerTask(
        "quadratic",
        dim,
        (dim,),
        lambda key: _quadratic(key, dim, dtype)[1],
        loss,
        None,
        lambda w, key: {"train_loss": loss(w, key, 0)},
        QUADRATIC_CEILING,
    )
