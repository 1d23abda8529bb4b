"""Known facts of the learned-optimizer and MLP-hyperparameter tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.systems import step_losses
from unroll import tasks
from unroll.tasks import inner, lopt

KEY = jax.random.key(0)


def test_digits_split_and_mlp():
    data = inner.digits()
    assert data.x_train.shape == (1500, 64) and data.x_validation.shape == (297, 64)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_train)) == set(range(10))
    net = inner.mlp((64, 32, 10))
    assert net.num_params == 64 * 32 + 32 + 32 * 10 + 10
    w = net.init(KEY)
    assert float(net.loss(jnp.zeros_like(w), data.x_train[:50], data.y_train[:50])) == pytest.approx(np.log(10))


@pytest.mark.parametrize("problem", lopt.PROBLEMS)
def test_learned_optimizer_with_identity_output_is_sgd(problem):
    """W_out = (0 on the hidden path, c on the gradient), b_out = 0: the inner run is SGD
    with learning rate lr * c, step for step (an independent loop over the inner problem)."""
    horizon, lr, c = 6, 0.1, 0.7
    system, _, _ = tasks.learned_optimizer(problem, horizon=horizon, learning_rate=lr, dtype=jnp.float64)
    theta = lopt.sgd_theta(scale=c, dtype=jnp.float64)
    task = lopt.inner_problem(problem, dtype=jnp.float64)
    loss, w, expected = task.loss, task.init(KEY), []
    for t in range(horizon):
        value, g = jax.value_and_grad(loss)(w, KEY, t)
        expected.append(float(value))
        w = w - lr * c * g
    state, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state[0]), np.asarray(w), rtol=1e-9, atol=1e-12)


def test_learned_optimizer_meta_gradient_matches_finite_differences():
    """The whole inner run is differentiable in theta (full BPTT vs central differences)."""
    system, theta, _ = tasks.learned_optimizer("quadratic", horizon=8, dtype=jnp.float64)
    theta = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(KEY, x.shape, x.dtype), theta)
    f = lambda th: unroll.episode_loss(system, th, KEY)
    grad = jax.grad(f)(theta)
    direction = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype), theta)
    eps = 1e-5
    plus = jax.tree_util.tree_map(lambda x, d: x + eps * d, theta, direction)
    minus = jax.tree_util.tree_map(lambda x, d: x - eps * d, theta, direction)
    fd = (f(plus) - f(minus)) / (2 * eps)
    analytic = sum(
        jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction))
    )
    assert float(analytic) == pytest.approx(float(fd), rel=1e-6)


def test_adam_baseline_is_tuned_on_a_grid():
    result = tasks.adam_baseline("quadratic", horizon=30, log10_learning_rates=np.linspace(-3, 0, 7), num_eval_tasks=4)
    objectives = np.asarray(result["objectives"])
    assert result["best"]["objective"] == pytest.approx(objectives.min())
    assert result["best_log10_learning_rate"] == pytest.approx(np.linspace(-3, 0, 7)[np.argmin(objectives)])
    assert objectives.min() < objectives[0]  # lr 1e-3 barely moves in 30 steps


def test_unknown_inner_problem():
    with pytest.raises(ValueError, match="problem"):
        tasks.learned_optimizer("imagenet")


def test_mlp_hyperparameters_step_is_sgd_with_momentum_and_weight_decay():
    """One run against a hand-written loop: v <- mu v + g + wd w, w <- w - lr v, the loss the
    validation loss of the new w."""
    horizon = 5
    system, _, evaluate = tasks.mlp_hyperparameters(horizon=horizon, dtype=jnp.float64, num_eval_episodes=2)
    theta = jnp.asarray([-0.5, 1.0, -2.0], jnp.float64)
    lr, mu, wd = 10**-0.5, 1 / (1 + np.exp(-1.0)), 1e-2
    data, net = inner.digits(), inner.mlp((64, 32, 10))
    x, y = jnp.asarray(data.x_train, jnp.float64), jnp.asarray(data.y_train)
    w = net.init(jax.random.fold_in(KEY, 0x7FFFFFFF), jnp.float64)
    v, expected = jnp.zeros_like(w), []
    for t in range(horizon):
        g = jax.grad(net.loss)(w, *inner.minibatch(KEY, t, x, y, 64))
        v = mu * v + g + wd * w
        w = w - lr * v
        expected.append(float(net.loss(w, data.x_validation.astype(np.float64), data.y_validation)))
    assert float(unroll.episode_loss(system, theta, KEY)) == pytest.approx(np.mean(expected), rel=1e-9)
    metrics = jax.jit(evaluate)(theta)
    assert 0.0 <= float(metrics["validation_accuracy"]) <= 1.0
    assert float(metrics["momentum"]) == pytest.approx(mu)


# --------------------------------------------------------------------------- architectures and optax


def _perturbed(theta, scale=0.05, seed=3):
    """Theta off its baseline, so the hidden paths and heads all act."""
    keys = jax.random.split(jax.random.key(seed), len(theta))
    return {k: v + scale * jax.random.normal(key, v.shape, v.dtype) for key, (k, v) in zip(keys, sorted(theta.items()))}


def _inner_run(problem, update, horizon):
    """An independent loop over the inner problem: ``update(g, w, t) -> w``; returns the
    losses and the final parameters."""
    task = lopt.inner_problem(problem, dtype=jnp.float64)
    loss, w, losses = task.loss, task.init(KEY), []
    for t in range(horizon):
        value, g = jax.value_and_grad(loss)(w, KEY, t)
        losses.append(float(value))
        w = update(g, w, t)
    return losses, w


@pytest.mark.parametrize("problem", lopt.PROBLEMS)
def test_adam_mlp_at_its_init_is_optax_adam(problem):
    """(b) at ``init_theta``: the inner run is ``optax.adam(lr)``, step for step (float64)."""
    horizon, lr = 12, 1e-2
    system, theta, _ = tasks.learned_optimizer(
        problem, horizon=horizon, learning_rate=lr, dtype=jnp.float64, architecture="adam-mlp"
    )
    adam = optax.adam(lr)
    opt_state = [None]

    def update(g, w, t):
        if opt_state[0] is None:
            opt_state[0] = adam.init(w)
        step, opt_state[0] = adam.update(g, opt_state[0], w)
        return optax.apply_updates(w, step)

    expected, w = _inner_run(problem, update, horizon)
    state, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state[0]), np.asarray(w), rtol=1e-10, atol=1e-12)


def test_controller_at_its_init_is_heavy_ball_sgd():
    horizon, lr, mu = 10, 0.05, 0.8
    arch = lopt.controller_optimizer(learning_rate=lr, momentum=mu)
    system, theta, _ = tasks.learned_optimizer("digits", horizon=horizon, dtype=jnp.float64, architecture=arch)
    velocity = [0.0]

    def update(g, w, t):
        velocity[0] = mu * velocity[0] + g
        return w - lr * velocity[0]

    expected, w = _inner_run("digits", update, horizon)
    state, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state[0]), np.asarray(w), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", lopt.ARCHITECTURES)
def test_as_optax_is_the_systems_inner_step_bit_for_bit(name):
    """The exported optimizer on the system's flat inner parameters (with the inner
    problem's layout) gives exactly the system's iterates, theta off its baseline, op for
    op (eager: compiled into different programs, XLA may fuse and so round differently,
    by 1e-14); on the same parameters as a pytree of the MLP's tensors (one optax leaf
    per layer) it agrees to rounding."""
    horizon = 5
    system, theta, _ = tasks.learned_optimizer("digits", horizon=horizon, architecture=name)
    theta = _perturbed(theta)
    loss = lopt.inner_problem("digits").loss
    layout = lopt.inner_layout("digits")
    split = lambda w: list(jnp.split(w, np.cumsum(np.bincount(layout.groups))[:-1]))
    flat_opt, tree_opt = lopt.as_optax(theta, name, layout=layout), lopt.as_optax(theta, name)

    def make_step(opt, wrap, unwrap):
        def optax_step(params, opt_state, t):
            _, g = jax.value_and_grad(loss)(unwrap(params), KEY, t)  # as the system step computes it
            updates, opt_state = opt.update(wrap(g), opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return optax_step

    flat_step = make_step(flat_opt, lambda g: g, lambda w: w)
    tree_step = make_step(tree_opt, split, jnp.concatenate)
    state = system.init(theta, KEY)
    flat, tree = state[0], split(state[0])
    flat_state, tree_state = flat_opt.init(flat), tree_opt.init(tree)
    step = system.step  # eager, op by op on both sides: compiled, XLA fuses the two programs differently
    for t in range(horizon):
        state, _ = step(theta, state, jnp.int32(t))
        flat, flat_state = flat_step(flat, flat_state, jnp.int32(t))
        tree, tree_state = tree_step(tree, tree_state, jnp.int32(t))
        np.testing.assert_array_equal(np.asarray(flat), np.asarray(state[0]), err_msg=f"step {t}")
        np.testing.assert_allclose(np.asarray(jnp.concatenate(tree)), np.asarray(state[0]), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", lopt.ARCHITECTURES)
def test_save_and_load_round_trip(tmp_path, name):
    arch = lopt.get_architecture(name, hidden=8)
    theta = _perturbed(arch.init_theta(0, jnp.float32))
    path = str(tmp_path / "opt.npz")
    lopt.save(path, theta, arch)
    read_theta, read_arch = lopt.read(path)
    assert (read_arch.name, read_arch.config) == (arch.name, arch.config)
    assert set(read_theta) == set(theta)
    for k in theta:
        assert read_theta[k].dtype == theta[k].dtype
        np.testing.assert_array_equal(np.asarray(read_theta[k]), np.asarray(theta[k]))
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    grads = jax.tree_util.tree_map(lambda x: 0.3 * x + 0.1, params)
    a, b = lopt.as_optax(theta, arch), lopt.load(path)
    ua, _ = a.update(grads, a.init(params), params)
    ub, _ = b.update(grads, b.init(params), params)
    for x, y in zip(jax.tree_util.tree_leaves(ua), jax.tree_util.tree_leaves(ub)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name, problem", [("adam-mlp", "quadratic"), ("controller", "digits")])
def test_meta_gradients_match_finite_differences(name, problem):
    """Full BPTT through the inner run against central differences. The Adam-feature MLP
    on the quadratic: 20 parameters, so no ReLU of its 32 x P units sits within the
    difference step of its kink (on the digits MLP's 2410 some do)."""
    system, theta, _ = tasks.learned_optimizer(problem, horizon=6, dtype=jnp.float64, architecture=name)
    theta = _perturbed(theta)
    f = lambda th: unroll.episode_loss(system, th, KEY)
    grad = jax.grad(f)(theta)
    direction = _perturbed(jax.tree_util.tree_map(jnp.zeros_like, theta), scale=1.0, seed=7)
    eps = 1e-5
    shifted = lambda s: jax.tree_util.tree_map(lambda x, d: x + s * eps * d, theta, direction)
    fd = (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * eps)
    analytic = sum(jnp.vdot(grad[k], direction[k]) for k in theta)
    assert float(analytic) == pytest.approx(float(fd), rel=1e-6)


def test_bad_architecture_input_fails_clearly(tmp_path):
    with pytest.raises(
        ValueError, match="`architecture`='adam' is not a learned-optimizer architecture; choose one of"
    ):
        tasks.learned_optimizer(architecture="adam")
    opt = lopt.as_optax(lopt.adam_mlp_optimizer().init_theta(), "adam-mlp")
    params = jnp.ones(3)
    with pytest.raises(ValueError, match=r"reads the parameters as a feature: call update\(grads, state, params\)"):
        opt.update(params, opt.init(params))
    path = str(tmp_path / "other.npz")
    np.savez(path, x=np.zeros(2))
    with pytest.raises(ValueError, match="is not a learned optimizer saved by unroll.tasks.lopt.save"):
        lopt.read(path)
    with pytest.raises(ValueError, match="`momentum`=1.0 must lie in"):
        lopt.controller_optimizer(momentum=1.0)


# --------------------------------------------------------------------------- task distribution, normalizer, baselines


def test_family_member_is_its_unpadded_network():
    """A sampled member of the MLP family, padded to 64-32-32-10, trains exactly as the
    unpadded network (built by slicing its live parameters out) under the Adam-feature
    optimizer off its baseline: the padding gets no gradient, no update and no weight in
    the optimizer's statistics (float64, 1e-10)."""
    family = inner.digits_mlp_family(jnp.float64)
    arch = lopt.adam_mlp_optimizer(hidden=8)
    theta = _perturbed(arch.init_theta(0, jnp.float64))
    horizon = 6
    system, _, _ = tasks.learned_optimizer(family, horizon=horizon, dtype=jnp.float64, architecture=arch)
    for seed in range(40):  # a depth-2 and a depth-1 member of different widths
        key = jax.random.key(seed)
        config = jax.tree_util.tree_map(np.asarray, inner.mlp_family_config(key))
        if int(config["depth"]) == 2 and len(set(config["widths"].tolist())) == 2:
            break
    depth_one = [s for s in range(40, 80) if int(inner.mlp_family_config(jax.random.key(s))["depth"]) == 1]
    keys = [key, jax.random.key(depth_one[0])]
    data = inner.digits()
    x, y = jnp.asarray(data.x_train, jnp.float64), jnp.asarray(data.y_train)
    for key in keys:
        config = jax.tree_util.tree_map(np.asarray, inner.mlp_family_config(key))
        widths = [int(w) for w in config["widths"][: int(config["depth"])]]
        act = inner._ACTIVATIONS[inner.FAMILY_ACTIVATIONS[int(config["activation"])]]
        mask = np.asarray(family.mask(key)) > 0
        sizes = (64, *widths, 10)

        def small_loss(w, t, sizes=sizes, act=act, config=config):
            layers, offset = [], 0
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers.append((w[offset : offset + a * b].reshape(a, b), w[offset + a * b : offset + a * b + b]))
                offset += a * b + b
            xb, yb = inner.minibatch(key, t, x, y, 64)
            n = int(config["batch_size"])
            h = xb[:n]
            for weight, bias in layers[:-1]:
                h = act(h @ weight + bias)
            logits = h @ layers[-1][0] + layers[-1][1]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:n, None], axis=1))

        w0 = np.asarray(family.init(key))
        assert np.all(w0[~mask] == 0)
        small = jnp.asarray(w0[mask])  # the live parameters, in the small network's flat order
        assert small.size == inner.mlp(sizes).num_params
        layout = lopt.sizes_layout(inner.mlp(sizes).tensor_sizes)
        state_small, expected = arch.init_state(small.size, jnp.float64), []
        for t in range(horizon):
            value, g = jax.value_and_grad(small_loss)(small, t)
            expected.append(float(value))
            update, state_small = arch.update(theta, g, state_small, small, t, layout)
            small = small + update
        state, got = step_losses(system, theta, key, horizon)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        final = np.asarray(state.params)
        np.testing.assert_allclose(final[mask], np.asarray(small), rtol=1e-10, atol=1e-13)
        assert np.all(final[~mask] == 0)


def test_normalizer_bounds_a_diverging_run():
    """Adam at learning rate 10 blows up every digits network: each step loss stays in
    [0, ceiling] (never NaN), the steps after divergence score the ceiling, and the
    parameters stop moving; the final metrics report it."""
    arch = lopt.baseline_optimizer("adam")
    theta = {"log10_learning_rate": jnp.asarray(1.0)}
    horizon = 60
    for problem in ("digits-mlp-family", "digits-conv"):
        system, _, evaluate = tasks.learned_optimizer(problem, horizon=horizon, architecture=arch, num_eval_tasks=4)
        state = system.init(theta, KEY)
        losses, params, flags = [], [], []
        for t in range(horizon):
            state, loss = jax.jit(system.step)(theta, state, jnp.int32(t))
            losses.append(float(loss)), params.append(np.asarray(state.params)), flags.append(float(state.diverged))
        losses, ceiling = np.asarray(losses), np.float32(inner.CLASSIFIER_CEILING)  # the system's dtype
        assert np.all(np.isfinite(losses)) and np.all((0 <= losses) & (losses <= ceiling))
        first = flags.index(1.0)
        assert first < horizon - 5
        assert np.all(losses[first + 1 :] == ceiling)
        for later in params[first:]:
            np.testing.assert_array_equal(later, params[first])
        metrics = jax.jit(evaluate)(theta)
        assert float(metrics["diverged"]) == 1.0
        assert float(metrics["final_train_loss"]) == pytest.approx(ceiling)
        assert float(metrics["objective"]) <= ceiling


@pytest.mark.parametrize("name", lopt.BASELINES)
def test_baselines_are_optax(name):
    """The tuned baselines step for step against optax's own (float64): adam,
    adam(cosine_decay_schedule), sgd(momentum)."""
    horizon, lr = 12, 10**-1.5
    arch = lopt.baseline_optimizer(name, horizon)
    theta = {"log10_learning_rate": jnp.asarray(-1.5, jnp.float64)}
    if name == "sgd-momentum":
        theta["momentum"] = jnp.asarray(0.8, jnp.float64)
        reference = optax.sgd(lr, momentum=0.8)
    elif name == "adam":
        reference = optax.adam(lr)
    else:
        reference = optax.adam(optax.cosine_decay_schedule(lr, horizon))
    system, _, _ = tasks.learned_optimizer("digits", horizon=horizon, dtype=jnp.float64, architecture=arch)
    opt_state = [None]

    def update(g, w, t):
        if opt_state[0] is None:
            opt_state[0] = reference.init(w)
        step, opt_state[0] = reference.update(g, opt_state[0], w)
        return optax.apply_updates(w, step)

    expected, w = _inner_run("digits", update, horizon)
    state, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state[0]), np.asarray(w), rtol=1e-9, atol=1e-12)


def test_tune_baseline_picks_the_best_grid_point():
    result = lopt.tune_baseline(
        "sgd-momentum",
        "quadratic",
        30,
        log10_learning_rates=np.linspace(-2, 1, 6),
        momenta=(0.0, 0.9),
        num_eval_tasks=4,
    )
    scores = np.asarray(result["scores"])
    assert len(scores) == 12 and np.all(np.isfinite(scores)) and np.max(scores) <= inner.QUADRATIC_CEILING
    best = int(np.argmin(scores))
    assert result["best"]["final_train_loss"] == pytest.approx(scores[best])
    assert result["best_theta"]["momentum"] == result["grid"]["momentum"][best]
    assert scores.max() == pytest.approx(inner.QUADRATIC_CEILING)  # lr 10 diverges


def test_run_lengths_restart_inner_runs_inside_the_episode():
    """With ``run_lengths``, an episode is a sequence of inner runs of log-uniform lengths:
    each starts from its own fresh init and optimizer state (the step count restarts), and
    its losses are those of a standalone run of that task."""
    lengths = (3, 9)
    arch = lopt.baseline_optimizer("adam")
    theta = {"log10_learning_rate": jnp.asarray(-2.0, jnp.float64)}
    system, _, _ = tasks.learned_optimizer(
        "quadratic", horizon=40, dtype=jnp.float64, architecture=arch, run_lengths=lengths
    )
    state, counts, keys, losses = system.init(theta, KEY), [], [], []
    for t in range(40):
        counts.append(int(state.count)), keys.append(state.key)
        state, loss = system.step(theta, state, jnp.int32(t))
        losses.append(float(loss))
    starts = [t for t, c in enumerate(counts) if c == 0]
    assert len(starts) >= 5
    draws = set()
    for a, b in zip(starts[:-1], starts[1:]):
        assert b - a == int(lopt.run_length(keys[a], lengths)) and lengths[0] <= b - a <= lengths[1]
        assert counts[a:b] == list(range(b - a))
        draws.add(b - a)
        alone, _, _ = tasks.learned_optimizer(
            inner.quadratic_task(20, jnp.float64), horizon=b - a, dtype=jnp.float64, architecture=arch
        )
        _, expected = step_losses(alone, theta, keys[a], b - a)
        np.testing.assert_allclose(losses[a:b], expected, rtol=1e-12)
    assert len(draws) >= 2
    with pytest.raises(ValueError, match="run_lengths"):
        tasks.learned_optimizer("quadratic", run_lengths=(10, 5))


def test_conv_task_gradient_matches_finite_differences():
    task = inner.digits_conv_task(dtype=jnp.float64)
    w = task.init(KEY) + 0.01
    direction = jax.random.normal(jax.random.key(5), w.shape, jnp.float64)
    f = lambda w: task.loss(w, KEY, 3)
    eps = 1e-6
    fd = (f(w + eps * direction) - f(w - eps * direction)) / (2 * eps)
    assert float(jnp.vdot(jax.grad(f)(w), direction)) == pytest.approx(float(fd), rel=1e-6)
    assert task.num_params == 9 * 8 + 8 + 128 * 10 + 10


def test_image_patches_is_a_same_convolution():
    x = inner.digits().x_train[:5]
    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 8)).astype(np.float32)
    reference = jax.lax.conv_general_dilated(
        x.reshape(-1, 8, 8, 1), kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = inner.image_patches(x) @ kernel.reshape(9, 8)
    np.testing.assert_allclose(got, np.asarray(reference).reshape(5, 64, 8), rtol=1e-6, atol=1e-6)


def test_log_meta_loss_is_the_log_of_the_normalized_loss():
    """``meta_loss="log"`` scores ``log(loss + LOG_FLOOR)`` of the same run, the ceiling's log
    once it diverges; a bad value is refused."""
    arch = lopt.baseline_optimizer("adam")
    for log10_lr in (-2.0, 1.0):  # one run that trains, one that diverges
        theta = {"log10_learning_rate": jnp.asarray(log10_lr, jnp.float64)}
        plain, _, _ = tasks.learned_optimizer("quadratic", horizon=20, dtype=jnp.float64, architecture=arch)
        logged, _, _ = tasks.learned_optimizer(
            "quadratic", horizon=20, dtype=jnp.float64, architecture=arch, meta_loss="log"
        )
        _, raw = step_losses(plain, theta, KEY, 20)
        _, got = step_losses(logged, theta, KEY, 20)
        np.testing.assert_allclose(got, np.log(np.asarray(raw) + lopt.LOG_FLOOR), rtol=1e-12)
    assert got[-1] == pytest.approx(np.log(inner.QUADRATIC_CEILING + lopt.LOG_FLOOR))
    with pytest.raises(ValueError, match="meta_loss"):
        tasks.learned_optimizer("quadratic", meta_loss="mean")
