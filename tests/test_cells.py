"""Cells with a parallel form (gilr, gilr-lstm, lru), stacked layers, the tasks' parallel
data streams and the long-dependency task: the parallel episode is the stepped one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from unroll import tasks
from unroll.tasks.evaluation import run_episode
from unroll.tasks.rnn import get_cell, last_step_loss, long_dependency_step

KEY = jax.random.key(3)
PARALLEL_CELLS = ["gilr", "gilr-lstm", "lru"]


def zero_readout(theta):
    return {**theta, "readout": jax.tree_util.tree_map(jnp.zeros_like, theta["readout"])}


# one horizon (12), input size (4) and hidden size (5) for all: eager ops compile once per shape
def make(task, cell, num_layers, **options):
    common = dict(cell=cell, hidden=5, num_layers=num_layers, dtype=jnp.float64, **options)
    if task == "copy":
        return tasks.copy_task(length=3, delay=6, num_symbols=2, num_eval_episodes=2, **common)
    if task == "flip-flop":
        return tasks.flip_flop(num_bits=4, horizon=12, pulse_probability=0.3, num_eval_episodes=2, **common)
    return tasks.long_dependency(horizon=12, num_classes=4, num_eval_episodes=2, **common)


def stepped_objective(system, theta, key):
    return jnp.mean(run_episode(system, theta, key)[1])


def losses_and_gradients(system, key, gradients: bool):
    """``theta -> (stepped losses, parallel losses, their mean's gradients or None)``: the
    stepped side is a ``lax.scan`` of ``system.step`` (full BPTT), all in one compile."""

    def mean_and_losses(losses):
        return jnp.mean(losses), losses

    def both(theta):
        stepped = lambda th: mean_and_losses(run_episode(system, th, key)[1])
        parallel = lambda th: mean_and_losses(system.episode(th, key))
        if not gradients:
            return stepped(theta)[1], parallel(theta)[1], None, None
        (_, by_steps), step_grad = jax.value_and_grad(stepped, has_aux=True)(theta)
        (_, in_parallel), parallel_grad = jax.value_and_grad(parallel, has_aux=True)(theta)
        return by_steps, in_parallel, step_grad, parallel_grad

    return jax.jit(both)


# every cell on every task, each cell and each task once with two layers (a compile each)
COMBINATIONS = [
    (task, cell, 2 if (i + j) % 3 == 0 else 1)
    for i, task in enumerate(["copy", "flip-flop", "long-dependency"])
    for j, cell in enumerate(PARALLEL_CELLS)
]


@pytest.mark.parametrize("task, cell, num_layers", COMBINATIONS)
def test_parallel_episode_equals_the_stepped_one(task, cell, num_layers):
    """system.episode gives the stepped losses (1e-12); with two layers (once per cell)
    the gradient of their mean is also full BPTT's (1e-10)."""
    system, theta, _ = make(task, cell, num_layers)
    assert system.episode is not None
    assert isinstance(theta["cell"], dict) if num_layers == 1 else len(theta["cell"]) == num_layers
    stepped, parallel, step_grad, parallel_grad = losses_and_gradients(system, KEY, num_layers == 2)(theta)
    assert parallel.shape == (system.horizon,)
    np.testing.assert_allclose(parallel, stepped, rtol=0, atol=1e-12)
    if num_layers == 2:
        for g, r in zip(jax.tree_util.tree_leaves(parallel_grad), jax.tree_util.tree_leaves(step_grad)):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)
        assert max(float(jnp.max(jnp.abs(r))) for r in jax.tree_util.tree_leaves(step_grad)) > 1e-4


def test_parallel_gradient_is_exact_gradient():
    """The parallel gradient is ``unroll.exact_gradient``'s (episode key ``split(key, 1)[0]``)."""
    system, theta, _ = make("flip-flop", "gilr-lstm", 1)
    grads = jax.jit(
        lambda th: (
            jax.grad(lambda th: jnp.mean(system.episode(th, jax.random.split(KEY, 1)[0])))(th),
            unroll.exact_gradient(system, th, KEY),
        )
    )
    grad, reference = grads(theta)
    for g, r in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)


def test_char_lm_parallel_episode_equals_the_stepped_one():
    system, theta, evaluate = tasks.char_lm(
        horizon=10, cell="gilr-lstm", hidden=4, embedding=3, dtype=jnp.float64, num_eval_sequences=2, eval_length=6
    )
    stepped, parallel = jax.jit(lambda th: (run_episode(system, th, KEY)[1], system.episode(th, KEY)))(theta)
    np.testing.assert_allclose(parallel, stepped, rtol=0, atol=1e-12)
    metrics = evaluate(zero_readout(theta))  # the validation system, in its parallel form
    assert float(metrics["objective"]) == pytest.approx(np.log(theta["embedding"].shape[0]), rel=1e-12)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_cells_without_a_parallel_form_have_no_episode(cell):
    assert get_cell(cell).sequence is None
    system, _, _ = make("flip-flop", cell, 2)
    assert system.episode is None


def test_stacked_layers_read_the_features_below():
    """Layer 0 reads the input, layer 1 the 2 * hidden features of an lru layer; the
    stepped state is a tuple over layers."""
    system, theta, _ = make("copy", "lru", 2)
    layer0, layer1 = theta["cell"]
    assert layer0["B_re"].shape == (5, 2 + 2) and layer1["B_re"].shape == (5, 2 * 5)
    assert theta["readout"]["W"].shape == (3, 10)
    state = system.init(theta, KEY)
    assert isinstance(state[0], tuple) and len(state[0]) == 2


def test_flip_flop_sequence_equals_the_stepped_stream():
    num_bits, horizon, p = 3, 200, 0.1
    system, theta, _ = tasks.flip_flop(num_bits, horizon, p, cell="tanh", hidden=2)

    def body(state, t):  # the step form's data: the pulses read and the bits held after step t
        state, _ = system.step(theta, state, t)
        return state, (tasks.flip_flop_inputs(KEY, t, num_bits, p), state[1][1])

    def both(key):
        stepped = jax.lax.scan(body, system.init(theta, key), jnp.arange(horizon))[1]
        return tasks.flip_flop_sequence(key, horizon, num_bits, p), stepped

    (pulses, targets), (stepped_pulses, held) = jax.jit(both)(KEY)
    np.testing.assert_array_equal(pulses, stepped_pulses)
    np.testing.assert_array_equal(targets, held)
    first = np.argmax(np.asarray(pulses) != 0, axis=0).min()
    assert np.any(targets == -1) and np.all(targets[:first] == 1) and np.any(pulses != 0)


def test_long_dependency_stream_and_last_step_loss():
    """The class is shown first, then noise; the only loss is at the last step,
    T * cross-entropy, so the objective is the final cross-entropy: ln C for a zero
    readout, ~0 for logits that know the class."""
    horizon, classes = 12, 4

    def data(key):
        xs, ys = tasks.long_dependency_sequence(key, horizon, classes, signal_length=2, noise=0.5)
        knows = jax.vmap(lambda y: last_step_loss(100.0 * jax.nn.one_hot(ys[-1], classes), y, horizon))(ys)
        return xs, ys, knows, long_dependency_step(key, horizon - 1, horizon, classes, 2, 0.5)  # the step form's

    xs, ys, knows, (x, y) = jax.jit(data)(KEY)
    label = int(ys[-1])
    np.testing.assert_array_equal(xs[:2], np.eye(classes)[[label, label]])
    assert np.all(ys[:-1] == -1) and 0 <= label < classes and np.std(xs[2:]) > 0.1
    assert float(jnp.mean(knows)) < 1e-30
    np.testing.assert_array_equal(x, xs[-1])
    assert int(y) == label
    system, theta, _ = tasks.long_dependency(horizon, classes, 2, 0.5, cell="gilr", hidden=5, dtype=jnp.float64)
    losses = jax.jit(system.episode)(zero_readout(theta), KEY)
    np.testing.assert_allclose(losses, [0.0] * (horizon - 1) + [horizon * np.log(classes)], rtol=1e-12)


def test_long_dependency_metrics_of_a_predictor_that_remembers():
    """A hand-set GILR writes the one-hot class on the signal step (gate ~0) and holds
    it (gate ~1) through noiseless inputs: objective ~0, accuracy 1 (0 with the readout
    negated); a zero readout scores ln C and the accuracy of always answering class 0."""
    horizon, classes, episodes = 12, 4, 8
    system, theta, evaluate = tasks.long_dependency(
        horizon, classes, noise=0.0, cell="gilr", hidden=classes, dtype=jnp.float64, num_eval_episodes=episodes
    )
    eye = jnp.eye(classes)
    cell = {"Ug": -60.0 * eye, "bg": jnp.full(classes, 30.0), "Uz": 3.0 * eye, "bz": jnp.zeros(classes)}
    remember = {"cell": cell, "readout": {"W": 50.0 * eye, "b": jnp.zeros(classes)}}
    evaluate = jax.jit(evaluate)
    metrics = evaluate(remember)
    assert float(metrics["objective"]) < 1e-12 and float(metrics["accuracy"]) == pytest.approx(1.0)
    stepped = jax.jit(stepped_objective, static_argnums=0)(system, remember, KEY)  # the step form agrees
    assert float(stepped) < 1e-12
    negated = {**remember, "readout": {"W": -50.0 * eye, "b": jnp.zeros(classes)}}
    assert float(evaluate(negated)["accuracy"]) == pytest.approx(0.0)
    keys = jax.random.split(jax.random.key(10_000), episodes)  # the evaluation episodes (seed 0)
    labels = jax.jit(jax.vmap(lambda k: tasks.long_dependency_sequence(k, horizon, classes)[1][-1]))(keys)
    zero = evaluate(zero_readout(remember))
    assert float(zero["objective"]) == pytest.approx(np.log(classes), rel=1e-12)
    assert float(zero["accuracy"]) == pytest.approx(np.mean(labels == 0))


def test_timescale_sets_chrono_biases():
    """b = log u, u ~ U(1, T_max - 1): memories 1 / (1 - sigmoid(b)) in [2, T_max]."""

    def init(cell, timescale=None):  # one compile, not an eager op at a time
        return jax.jit(get_cell(cell, timescale).init, static_argnums=(1, 2, 3))(KEY, 2, 256, jnp.float64)

    memory = 1 + np.exp(np.asarray(init("gilr", 1000.0)["bg"]))
    assert memory.min() >= 2 and memory.max() <= 1000 and memory.max() > 900
    forget, write = np.split(np.asarray(init("gilr-lstm")["b"][:512]), 2)  # default DEFAULT_TIMESCALE = 100
    np.testing.assert_array_equal(write, -forget)
    assert 0 <= forget.min() and forget.max() <= np.log(99) and forget.max() > np.log(90)
    radius = np.exp(-np.exp(np.asarray(init("lru", 1e5)["nu"])))
    assert radius.max() > np.exp(-1 / 5e4)  # memories up to the timescale
    _, theta, _ = tasks.long_dependency(horizon=500, cell="gilr", hidden=5, dtype=jnp.float64)
    assert float(jnp.min(theta["cell"]["bg"])) >= 0 and float(jnp.max(theta["cell"]["bg"])) > np.log(50)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: make("copy", "gilr", 0), ValueError, "num_layers"),
        (lambda: make("flip-flop", "gilr", 1.5), TypeError, "num_layers"),
        (lambda: make("copy", "mamba", 1), ValueError, "cell"),
        (lambda: get_cell("tanh", timescale=100), ValueError, "timescale"),
        (lambda: get_cell("gilr", timescale=1.5), ValueError, "timescale"),
        (lambda: tasks.long_dependency(horizon=5, signal_length=5), ValueError, "signal_length"),
        (lambda: tasks.long_dependency(horizon=5, noise=-1.0), ValueError, "noise"),
        (lambda: tasks.long_dependency(horizon=5, num_classes=1), ValueError, "num_classes"),
    ],
)
def test_bad_options_are_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("cell", PARALLEL_CELLS)
def test_chunked_parallel_bptt_equals_full_bptt_and_rtrl_averages_to_it(cell):
    """Two layers, the parallel form in chunks of 5 steps (12 = 5 + 5 + 2, the last one
    padded): its losses are the stepped ones (1e-12); ``parallel_bptt``'s estimate is
    ``full_bptt``'s from the same keys (1e-10); one worker's 6 RTRL windows of 2 steps
    cover that episode and average to it (1e-10)."""
    system, theta, _ = make("long-dependency", cell, 2, chunk=5)
    key = jax.random.key(7)
    np.testing.assert_allclose(system.episode(theta, key), run_episode(system, theta, key)[1], rtol=0, atol=1e-12)
    estimates = {}
    for name, est, windows in [
        ("parallel", unroll.parallel_bptt(system), 1),
        ("full", unroll.full_bptt(system), 1),
        ("rtrl", unroll.rtrl(system, truncation=2), 6),
    ]:
        state, estimate, grads = est.init(theta, key), jax.jit(est.estimate), []
        for _ in range(windows):
            grad, state, _ = estimate(theta, state, key)
            grads.append(grad)
        estimates[name] = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    for other in ("full", "rtrl"):
        for g, r in zip(jax.tree_util.tree_leaves(estimates["parallel"]), jax.tree_util.tree_leaves(estimates[other])):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)


def test_compare_runs_the_long_dependency_task_in_parallel_and_sequentially(tmp_path):
    """``unroll compare long-dependency``: parallel-bptt and full-bptt take the same steps
    (same episodes, same exact gradients), so their objectives agree."""
    _, summary = unroll.compare(
        "long-dependency",
        estimators=["parallel-bptt", "full-bptt"],
        seeds=1,
        steps=3,
        out_dir=str(tmp_path),
        progress=False,
        task_options={"horizon": 30},
    )
    parallel, full = (summary["estimators"][name]["final_objective"]["mean"] for name in ("parallel-bptt", "full-bptt"))
    assert parallel == pytest.approx(full, rel=1e-4)
