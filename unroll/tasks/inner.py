"""Inner problems for meta-learning tasks: scikit-learn's bundled digits (8x8 images, no
download) and a small MLP classifier on them, with parameters as one flat vector."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            "the digits tasks need scikit-learn (`pip install scikit-learn`): it ships the data."
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
    sizes = tuple(int(s) for s in sizes)
    return MLP(sizes, sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])))


def minibatch(key, t, x, y, batch_size: int):
    """Step ``t``'s minibatch, drawn from ``fold_in(key, t)`` (with replacement)."""
    index = jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, x.shape[0])
    return x[index], y[index]
