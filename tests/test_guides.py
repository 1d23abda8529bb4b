"""The ecosystem guides (``docs/guides/*.md``) run as written, and their gradients are right.

Each page's python blocks run in one namespace; then, on the page's own system and
``theta`` (an equinox module, an nnx ``State``, linen variables, an optax learning rate):

* full BPTT (``unroll.exact_gradient``) against central finite differences along random
  directions (float64);
* RTRL's windows over one whole episode against full BPTT (the systems are
  deterministic, so they are equal to rounding);
* PES: the mean of 64 independent estimates within 4 standard errors of full BPTT along
  the exact gradient and 7 random directions (sigma small enough that the Gaussian
  smoothing's bias is far below that; projections, not the hundreds of components one by
  one, so 4 standard errors is a test at about 1 in 2000, not a near-certain false alarm).
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unroll
from tests.stochastic import z_scores
from tests.systems import tree_mean, window_estimates

GUIDES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "guides")
KEY = jax.random.key(7)


def run_guide(name: str, capsys) -> dict:
    with open(os.path.join(GUIDES, name)) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, f"{name} has no python block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, name, "exec"), namespace)
    namespace["printed"] = capsys.readouterr().out
    return namespace


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def check_gradients(system, theta, key, rtrl, pes, num_windows: int, num_samples: int = 64) -> None:
    theta = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), theta)  # flax params are float32
    exact = unroll.exact_gradient(system, theta, key)
    assert jax.tree_util.tree_structure(exact) == jax.tree_util.tree_structure(theta)
    vector, unravel = ravel_pytree(theta)
    assert vector.dtype == jnp.float64
    loss = lambda v: unroll.episode_loss(system, unravel(v), key)
    for i in range(3):
        direction = jax.random.normal(jax.random.fold_in(KEY, i), vector.shape, vector.dtype)
        eps = 1e-5
        fd = (loss(vector + eps * direction) - loss(vector - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(fd), float(flat(exact) @ direction), rtol=1e-6, atol=1e-8)  # O(eps^2)
    grads, _, _ = window_estimates(rtrl, theta, num_windows, key)
    np.testing.assert_allclose(flat(tree_mean(grads)), flat(exact), rtol=1e-9, atol=1e-12)
    samples = unroll.diagnostics.estimate_samples(pes, theta, key, num_samples, num_windows)
    # sample i's leaves, raveled in ravel_pytree's order (host copies: 64 x leaves eager slices took seconds)
    samples = np.concatenate([np.asarray(x).reshape(num_samples, -1) for x in jax.tree_util.tree_leaves(samples)], 1)
    directions = [flat(exact)] + [
        np.asarray(jax.random.normal(jax.random.fold_in(KEY, 10 + i), vector.shape)) for i in range(7)
    ]
    directions = np.stack([d / np.linalg.norm(d) for d in directions], axis=1)
    z = z_scores(samples @ directions, flat(exact) @ directions)
    assert np.max(np.abs(z)) < 4.0, z


def test_equinox_guide(capsys):
    ns = run_guide("equinox.md", capsys)
    # the module itself is theta: 4 windows of 10 steps are one episode of 40
    check_gradients(ns["system"], ns["model"], ns["key"], ns["rtrl"], ns["pes"], num_windows=4)
    assert isinstance(ns["exact"], type(ns["model"]))
    losses = [float(x) for x in re.findall(r"loss ([\d.]+) -> ([\d.]+)", ns["printed"])[0]]
    assert losses[1] < 0.01 * losses[0]  # train on the module fits the signal
    # the partitioned MLP: its gradient against finite differences and RTRL
    rtrl = unroll.rtrl(ns["mlp_system"], truncation=10)
    pes = unroll.pes(ns["mlp_system"], truncation=10, sigma=1e-3, num_particles=64, num_workers=4)
    check_gradients(ns["mlp_system"], ns["theta"], ns["key"], rtrl, pes, num_windows=4)


def test_flax_guide(capsys):
    ns = run_guide("flax.md", capsys)
    check_gradients(ns["nnx_system"], ns["params"], ns["key"], ns["rtrl"], ns["pes"], num_windows=4)
    rtrl = unroll.rtrl(ns["linen_system"], truncation=10)
    pes = unroll.pes(ns["linen_system"], truncation=10, sigma=1e-3, num_particles=64, num_workers=4)
    check_gradients(ns["linen_system"], ns["variables"], ns["key"], rtrl, pes, num_windows=4)
    for before, after in re.findall(r"loss ([\d.]+) -> ([\d.]+)", ns["printed"]):
        assert float(after) < 0.01 * float(before)
    # nnx.update put the trained weights back into the module
    nnx = pytest.importorskip("flax.nnx")
    _, in_module, _ = nnx.split(ns["model"], nnx.Param, ...)
    np.testing.assert_array_equal(flat(in_module), flat(ns["nnx_trained"]))


def test_optax_guide(capsys):
    ns = run_guide("optax.md", capsys)
    # 5 windows of 10 steps are one inner run of 50
    check_gradients(ns["system"], ns["theta"], ns["key"], ns["rtrl"], ns["pes"], num_windows=5)
    # PES-tuned learning rate: within a grid step of the best of a fine grid, and as good to 1%
    grid = np.linspace(-6.0, 0.0, 121)
    losses = jax.vmap(lambda g: unroll.episode_loss(ns["system"], {"log_learning_rate": g}, ns["key"]))(grid)
    best = grid[int(np.argmin(losses))]
    tuned = float(ns["tuned"]["log_learning_rate"])
    assert abs(tuned - best) < 0.1, (np.exp(tuned), np.exp(best))
    assert float(unroll.episode_loss(ns["system"], ns["tuned"], ns["key"])) < 1.01 * float(np.min(losses))
