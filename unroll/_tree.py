"""Pytree arithmetic and noise shared by the estimators (one place, so no estimator
imports another's module)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any  # any pytree of arrays (theta, a state, a gradient): the one alias every module uses


def tree_scale(scale: jax.Array, tree: PyTree) -> PyTree:
    """``scale * tree``, leaf by leaf."""
    return jax.tree_util.tree_map(lambda x: scale * x, tree)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    """``a + b``, leaf by leaf."""
    return jax.tree_util.tree_map(jnp.add, a, b)


def tree_norm(tree: PyTree) -> jax.Array:
    """``|tree|_2`` over all leaves."""
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def normal_like(key: jax.Array, tree: PyTree, shape: tuple = (), scale: float = 1.0) -> PyTree:
    """``scale * N(0, I)`` with the structure and dtypes of ``tree``, leading ``shape`` axes
    (one draw for all leaves, split among them)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x in leaves]
    dtype = jnp.result_type(*leaves)
    flat = scale * jax.random.normal(key, shape + (sum(sizes),), dtype)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1) if len(leaves) > 1 else [flat]
    noise = [part.reshape(shape + jnp.shape(x)).astype(jnp.result_type(x)) for part, x in zip(parts, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noise)


def perturbations(key, theta, num_workers: int, num_particles: int, sigma: float, antithetic: bool) -> PyTree:
    """Per-particle ``eps ~ N(0, sigma^2 I)`` with leading ``[W, P]`` axes; antithetic
    particles are ``[eps_1..eps_n, -eps_1..-eps_n]``."""
    half = num_particles // 2 if antithetic else num_particles
    eps = normal_like(key, theta, (num_workers, half), sigma)
    if antithetic:
        eps = jax.tree_util.tree_map(lambda e: jnp.concatenate([e, -e], axis=1), eps)
    return eps


def rademacher_like(key: jax.Array, leaves: list) -> list:
    """Independent ``+-1`` draws shaped like each of ``leaves``."""
    keys = jax.random.split(key, len(leaves))
    return [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
