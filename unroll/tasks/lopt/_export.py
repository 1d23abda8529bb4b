"""A meta-trained learned optimizer as an optax ``GradientTransformation`` (``as_optax``),
and its file: ``save`` writes it, ``read`` and ``load`` read it back."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from unroll._errors import BadValue
from unroll.tasks.lopt._architectures import Architecture, Layout, get_architecture, pytree_layout


class LearnedOptimizerState(NamedTuple):
    """``as_optax``'s state: the step count and the architecture's per-parameter state."""

    count: jax.Array
    inner: object


def as_optax(
    theta: dict, architecture: str | Architecture = "mlp", layout: Layout | None = None
) -> optax.GradientTransformation:
    """The learned optimizer with meta-parameters ``theta`` as an optax optimizer.

    It works on any pytree of parameters (raveled to one vector; each leaf is one
    ``Layout`` group). ``update`` needs ``params`` (a feature):
    ``updates, state = opt.update(grads, state, params)``, then
    ``optax.apply_updates(params, updates)``. On the meta-training system's flat
    parameters with its layout, the iterates are its inner step's, bit for bit.

    Args:
      theta: the meta-parameters (e.g. meta-trained from ``learned_optimizer``'s).
      architecture: one of ``ARCHITECTURES`` (with its default settings) or an
        ``Architecture``.
      layout: overrides the groups (e.g. ``inner_layout(problem)`` for a flat vector);
        ``None``: one group per leaf (``pytree_layout``).

    Returns:
      an ``optax.GradientTransformation`` whose state is a ``LearnedOptimizerState``.
    """
    arch = get_architecture(architecture)

    def init(params):
        flat, _ = ravel_pytree(params)
        return LearnedOptimizerState(jnp.zeros((), jnp.int32), arch.init_state(flat.size, flat.dtype))

    def update(updates, state, params=None):
        if params is None:
            raise BadValue(
                f"the learned optimizer ({arch.name}) reads the parameters as a feature: call update(grads, state, params)."
            )
        grad, unravel = ravel_pytree(updates)
        flat, _ = ravel_pytree(params)
        groups = pytree_layout(params) if layout is None else layout
        step, inner = arch.update(theta, grad, state.inner, flat, state.count, groups)
        return unravel(step), LearnedOptimizerState(state.count + 1, inner)

    return optax.GradientTransformation(init, update)


FILE_FORMAT = "unroll-learned-optimizer/1"
"""The ``format`` a file ``save`` writes carries in its ``meta``; ``read`` checks it."""


def save(path: str, theta: dict, architecture: str | Architecture = "mlp") -> None:
    """Writes a learned optimizer to ``path``, a ``.npz``.

    The file holds one array per entry of ``theta`` under ``theta/<name>``, and ``meta``,
    a JSON string ``{"format": "unroll-learned-optimizer/1", "architecture": name,
    "config": {...}}``. ``load(path)`` reads it back as an optax optimizer,
    ``read(path)`` as ``(theta, architecture)``.

    Args:
      path: the file to write.
      theta: the meta-parameters.
      architecture: one of ``ARCHITECTURES`` (with its default settings) or an
        ``Architecture``; its name and config are stored.

    Returns:
      None.
    """
    arch = get_architecture(architecture)
    arrays = {f"theta/{k}": np.asarray(v) for k, v in theta.items()}
    meta = {"format": FILE_FORMAT, "architecture": arch.name, "config": arch.config}
    with open(path, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)


def read(path: str) -> tuple[dict, Architecture]:
    """A learned optimizer from a file ``save`` wrote (checked to be one).

    Args:
      path: the file.

    Returns:
      ``(theta, architecture)``: the meta-parameters and the ``Architecture`` rebuilt
      from the stored name and config.
    """
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        if meta.get("format") != FILE_FORMAT:
            raise BadValue(
                f"{path!r} is not a learned optimizer saved by unroll.tasks.lopt.save (format {FILE_FORMAT})."
            )
        theta = {k.removeprefix("theta/"): jnp.asarray(data[k]) for k in data.files if k.startswith("theta/")}
    return theta, get_architecture(meta["architecture"], **meta["config"])


def load(path: str) -> optax.GradientTransformation:
    """The optax optimizer saved at ``path``: ``as_optax(*read(path))``.

    Args:
      path: a file ``save`` wrote.

    Returns:
      an ``optax.GradientTransformation`` (see ``as_optax``).
    """
    return as_optax(*read(path))
