"""Study 4: meta-training learned optimizers that beat tuned Adam on held-out tasks.

The inner tasks are digits MLPs with a sampled architecture and setup per episode
(``unroll.tasks.inner.digits_mlp_family``: 1-2 hidden layers of width 8-32, tanh / relu /
elu, init scale 0.5-2, batches of 16-64), trained for ``--horizon`` (1000) steps, every
step loss through the task's normalizer (capped at 3 ln 10; a diverged run freezes).
Meta-trained: the Adam-feature MLP (b, ``adam-mlp``, initialized at Adam with learning
rate 1e-2) by PES, NRES, truncated BPTT (truncation 10: short-horizon bias, Wu et al.
2018) and ES; the per-parameter MLP (a, ``mlp``, from SGD) and the per-layer controller
(c, ``controller``, from heavy ball) by PES, as ablations; and (b) by PES on the mean log
loss (``pes-log``, ``meta_loss="log"``) against the mean loss, and by PES on inner runs of
log-uniform lengths in [100, 2000] (``pes-lengths``, ``run_lengths``, the truncation
schedule). Each run has the same CPU
budget (``--minutes`` of outer steps, all seeds at once as a vmap axis); the outer
optimizer is Adam after clipping the meta-gradient's global norm (``--clip``).

Scored on held-out tasks: 16 unseen members of the MLP family, and 16 runs of a small
convolutional network (``digits_conv_task``), an architecture never meta-trained on; at
the meta-training horizon and at twice it. The measure is the mean final training loss
(the whole training set at the last step, ceiling for a diverged run); validation
accuracy is reported. Baselines, each tuned by grid on those same held-out tasks and
horizon: Adam with a constant learning rate, Adam with a cosine schedule to zero over the
horizon, SGD with momentum (learning rate x momentum).

    python experiments/learned_optimizer.py [--seeds 2] [--minutes 5] [--only pes,tbptt-10]
    python experiments/learned_optimizer.py --table-only  # the table from the cached runs

Writes ``experiments/results/learned-optimizer/``: ``baselines.json``, ``runs/<name>.json``
(one per meta-training run, kept as it goes), ``results.md``, ``curves.png``,
``learned_optimizer.npz`` (the best PES-trained (b), over runs and seeds); ``results.md`` is
included by docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import publish, results_dir  # noqa: E402

import unroll  # noqa: E402
from unroll.tasks import lopt  # noqa: E402
from unroll.tasks.evaluation import run_episode  # noqa: E402

STUDY = "learned-optimizer"
TRAIN_FAMILY = "digits-mlp-family"
SUITES = {"mlp-family": "digits-mlp-family", "conv": "digits-conv"}  # held-out suites
ADAM_LR = 1e-2  # (b) starts at Adam with the tuned constant learning rate of the training family
SGD_LR, SGD_MOMENTUM = 10**-1.5, 0.9  # (c) starts at the tuned heavy ball
SIGMA = 0.01
NUM_EVAL_TASKS = 16
BASELINE_GRID = np.arange(-3.0, -0.49, 0.25)
SGD_GRID, SGD_MOMENTA = np.arange(-2.5, 0.51, 0.5), (0.5, 0.9, 0.99)

# name -> (architecture, estimator, its settings)
RUNS = {
    "pes": ("adam-mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    "nres": ("adam-mlp", "nres", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    "tbptt-10": ("adam-mlp", "truncated_bptt", {"truncation": 10, "num_workers": 8}),
    "es": ("adam-mlp", "es", {"num_particles": 8}),
    "pes-mlp": ("mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    "pes-controller": ("controller", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    # PES on the mean log loss (meta_loss="log"), which weighs the end of the run as much as its start
    "pes-log": ("adam-mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    # PES on inner runs of log-uniform lengths in [100, 2000] (the truncation schedule)
    "pes-lengths": ("adam-mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    # the same at the 20-minute budget per estimator
    "pes-lengths-20min": ("adam-mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
    # pes at the 20-minute budget, keeping per seed the theta that scored best on the meta-validation tasks
    "pes-20min": ("adam-mlp", "pes", {"truncation": 50, "num_particles": 8, "num_workers": 4}),
}
RUN_LENGTHS = {"pes-lengths": (100, 2000), "pes-lengths-20min": (100, 2000)}
RUN_MINUTES = {"pes-lengths-20min": 20.0, "pes-20min": 20.0}  # a run's own budget in minutes (the others: --minutes)
META_LOSS = {"pes-log": "log"}  # the others meta-train on the mean normalized loss
# runs that keep, per seed, the theta of the evaluation with the best meta-validation objective (early
# stopping on the meta-validation tasks, never on the held-out test tasks); the others keep the last theta
SELECT_BEST = {"pes-20min"}


START = {"adam-mlp": "Adam, lr 1e-2", "mlp": "SGD, lr 0.1", "controller": "heavy ball, lr 1e-1.5, mu 0.9"}


def architecture(name: str) -> lopt.Architecture:
    if name == "adam-mlp":
        return lopt.adam_mlp_optimizer(learning_rate=ADAM_LR)
    if name == "controller":
        return lopt.controller_optimizer(learning_rate=SGD_LR, momentum=SGD_MOMENTUM)
    return lopt.mlp_optimizer()


def build(run: str, system):
    _, estimator, settings = RUNS[run]
    settings = dict(settings)
    if estimator != "truncated_bptt":
        settings.update(sigma=SIGMA, nonfinite="drop")
    return getattr(unroll, estimator)(system, **settings)


_EVALUATORS: dict = {}


def evaluators(arch, horizon: int) -> dict:
    """``suite@horizon -> evaluate(theta)`` on the held-out tasks (compiled once per architecture)."""
    if (arch.name, horizon) in _EVALUATORS:
        return _EVALUATORS[arch.name, horizon]
    out = _EVALUATORS[arch.name, horizon] = {}
    for suite, problem in SUITES.items():
        for h in (horizon, 2 * horizon):
            _, _, evaluate = lopt.learned_optimizer(problem, h, architecture=arch, num_eval_tasks=NUM_EVAL_TASKS)
            out[f"{suite}@{h}"] = jax.jit(evaluate)
    return out


def baselines(horizon: int, path: str) -> dict:
    """Every baseline tuned on every held-out suite and horizon (cached in ``path``)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    out = {}
    for suite, problem in SUITES.items():
        for h in (horizon, 2 * horizon):
            for name in lopt.BASELINES:
                start = time.time()
                grid = SGD_GRID if name == "sgd-momentum" else BASELINE_GRID
                result = lopt.tune_baseline(name, problem, h, grid, momenta=SGD_MOMENTA, num_eval_tasks=NUM_EVAL_TASKS)
                result["time_s"] = time.time() - start
                out[f"{suite}@{h}/{name}"] = result
                print(f"{suite}@{h} {name}: {result['best_theta']} -> {result['best']}", flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def meta_train(run: str, args, path: str) -> dict:
    """One meta-training run, all seeds at once; its result json (cached in ``path``)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    arch_name = RUNS[run][0]
    arch = architecture(arch_name)
    lengths = RUN_LENGTHS.get(run)  # episodes as long as the longest inner run
    meta_loss = META_LOSS.get(run, "loss")
    system, theta, _ = lopt.learned_optimizer(
        TRAIN_FAMILY,
        args.horizon if lengths is None else lengths[1],
        architecture=arch,
        run_lengths=lengths,
        meta_loss=meta_loss,
    )
    _, _, curve_eval = lopt.learned_optimizer(
        TRAIN_FAMILY, args.horizon, architecture=arch, num_eval_tasks=8, seed=1
    )  # meta-validation tasks for the curve (other keys than the held-out test tasks; raw loss)
    estimator = build(run, system)
    optimizer = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.outer_learning_rate))
    start = time.time()
    final, history = unroll.train(
        estimator,
        optimizer,
        theta,
        jax.random.key(args.seed),
        100_000,
        num_seeds=args.seeds,
        eval_fn=lambda th: (
            {"objective": curve_eval(th)["objective"]} | ({"theta": ravel_pytree(th)[0]} if run in SELECT_BEST else {})
        ),
        eval_every=args.eval_every,
        time_limit=60.0 * RUN_MINUTES.get(run, args.minutes),
        progress=not args.no_progress,
        on_nonfinite="skip",
        name=run,
    )
    wall = time.time() - start
    thetas = [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), final) for i in range(args.seeds)]
    selected = None
    if run in SELECT_BEST:  # the snapshot at the best meta-validation objective, per seed
        objective = np.asarray(history["eval/objective"]).reshape(args.seeds, -1)
        snapshots = np.moveaxis(np.asarray(history["eval/theta"]), -1, 1)  # [seeds, evaluations, p]
        best = objective.argmin(axis=1)
        unravel = ravel_pytree(theta)[1]
        thetas = [jax.tree_util.tree_map(np.asarray, unravel(jnp.asarray(snapshots[i, b]))) for i, b in enumerate(best)]
        selected = [int(np.asarray(history["eval_step"])[b]) for b in best]
    scores = {}
    for where, evaluate in evaluators(arch, args.horizon).items():
        scores[where] = [{k: float(v) for k, v in evaluate(th).items()} for th in thetas]
    result = {
        "run": run,
        "architecture": arch_name,
        "config": arch.config,
        "estimator": RUNS[run][1],
        "settings": RUNS[run][2],
        "sigma": SIGMA if RUNS[run][1] != "truncated_bptt" else None,
        "run_lengths": RUN_LENGTHS.get(run),
        "meta_loss": meta_loss,
        "minutes": RUN_MINUTES.get(run, args.minutes),
        "selected_steps": selected,  # outer step of each seed's kept theta (None: the last)
        "outer_steps": int(np.asarray(history["loss"]).shape[-1]),
        "inner_steps_per_outer_step": int(np.asarray(history["steps"]).reshape(args.seeds, -1)[0, 0]),
        "train_time_s": float(np.asarray(history["train_time_s"])),
        "wall_s": wall,
        "num_rejected": np.asarray(history["num_rejected"]).tolist(),
        "dropped": float(np.sum(np.asarray(history.get("dropped", 0.0)))),
        "curve": {
            "step": np.asarray(history["eval_step"]).tolist(),
            "objective": np.asarray(history["eval/objective"]).reshape(args.seeds, -1).tolist(),
        },
        "initial": {
            where: {k: float(v) for k, v in ev(theta).items()} for where, ev in evaluators(arch, args.horizon).items()
        },
        "scores": scores,
        "theta": [{k: v.tolist() for k, v in th.items()} for th in thetas],
    }
    with open(path, "w") as f:
        json.dump(result, f)
    return result


def loss_curves(arch, theta, problem: str, horizon: int) -> np.ndarray:
    """Mean step loss over the held-out tasks at every inner step."""
    system, _, _ = lopt.learned_optimizer(problem, horizon, architecture=arch)
    keys = jax.random.split(jax.random.key(10_000), NUM_EVAL_TASKS)
    losses = jax.jit(jax.vmap(lambda k: run_episode(system, theta, k)[1]))(keys)
    return np.asarray(jnp.mean(losses, axis=0))


def plot(results: dict, tuned: dict, horizon: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (suite, problem) in zip(axes[:2], SUITES.items()):
        h = 2 * horizon
        steps = np.arange(1, h + 1)
        smooth = lambda y: np.convolve(y, np.ones(20) / 20, mode="valid")
        for i, name in enumerate(lopt.BASELINES):
            best = tuned[f"{suite}@{h}/{name}"]["best_theta"]
            theta = {k: jnp.asarray(v, jnp.float32) for k, v in best.items()}
            y = loss_curves(lopt.baseline_optimizer(name, h), theta, problem, h)
            ax.plot(steps[19:], smooth(y), "--", color=colors[i], label=f"{name} (tuned)")
        learned = [(run, r) for run, r in results.items() if run in ("pes", "tbptt-10", "nres", "es", "pes-20min")]
        for i, (run, r) in enumerate(learned):
            theta = {k: jnp.asarray(v, jnp.float32) for k, v in r["theta"][0].items()}
            y = loss_curves(architecture(r["architecture"]), theta, problem, h)
            ax.plot(steps[19:], smooth(y), color=colors[3 + i], label=f"learned ({run}, seed 0)")
        ax.axvline(horizon, color="gray", lw=0.8)
        ax.set(
            yscale="log",
            xlabel="inner step",
            ylabel="training loss (minibatch, 20-step mean)",
            title=f"held-out {suite}, {h} steps",
        )
        ax.legend(fontsize=7)
    ax = axes[2]
    for i, (run, r) in enumerate(results.items()):
        y = np.asarray(r["curve"]["objective"])
        ax.plot(r["curve"]["step"], y.mean(axis=0), color=colors[i % len(colors)], label=run)
    ax.set(
        xlabel="outer step", ylabel="meta-validation objective (mean inner loss)", title="meta-training", yscale="log"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict, tuned: dict, args) -> str:
    h1, h2 = args.horizon, 2 * args.horizon
    wheres = [f"{s}@{h}" for h in (h1, h2) for s in SUITES]
    lines = [
        f"Learned optimizers meta-trained on the digits MLP family at horizon {h1}, scored on held-out tasks "
        f"({NUM_EVAL_TASKS} unseen MLP-family members; {NUM_EVAL_TASKS} runs of a conv net, an architecture never "
        f"meta-trained on) at {h1} and {h2} steps. Cells: mean final training loss (whole training set), mean ± std "
        f"over {args.seeds} meta-training seeds, and validation accuracy; each baseline tuned by grid on the same "
        f"tasks and horizon. Budget: {args.minutes:g} min of outer steps per run "
        + "".join(f"({run}: {m:g} min) " for run, m in RUN_MINUTES.items() if run in results)
        + "(all seeds at once), 2 CPU cores.",
        "",
        "| optimizer | outer steps | " + " | ".join(wheres) + " | beats tuned Adam on every seed |",
        "|---|---:|" + "---:|" * len(wheres) + ":---:|",
    ]
    adam = {w: tuned[f"{w}/adam"]["best"]["final_train_loss"] for w in wheres}
    for name in lopt.BASELINES:
        cells = []
        for w in wheres:
            best = tuned[f"{w}/{name}"]
            lr = best["best_theta"]["log10_learning_rate"]
            extra = f", mu {best['best_theta']['momentum']:g}" if "momentum" in best["best_theta"] else ""
            cells.append(
                f"{best['best']['final_train_loss']:.4f} ({best['best']['validation_accuracy']:.3f}; lr 1e{lr:g}{extra})"
            )
        lines.append(f"| {name} (tuned) | - | " + " | ".join(cells) + " | - |")
    starts = {}
    for r in results.values():
        starts.setdefault(r["architecture"], r["initial"])
    for arch_name, initial in starts.items():
        cells = [f"{initial[w]['final_train_loss']:.4f} ({initial[w]['validation_accuracy']:.3f})" for w in wheres]
        lines.append(f"| {arch_name} at its start ({START[arch_name]}) | 0 | " + " | ".join(cells) + " | - |")
    for run, r in results.items():
        cells, every = [], []
        for w in wheres:
            values = np.asarray([s["final_train_loss"] for s in r["scores"][w]])
            acc = np.asarray([s["validation_accuracy"] for s in r["scores"][w]])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f} ({acc.mean():.3f})")
            every.append(bool(np.all(values < adam[w])))
        verdict = ", ".join(f"{w}: {'yes' if e else 'no'}" for w, e in zip(wheres, every))
        kept = r.get("selected_steps")
        steps = f"{r['outer_steps']} (kept: {', '.join(map(str, kept))})" if kept else f"{r['outer_steps']}"
        lines.append(f"| {run} ({r['architecture']}) | {steps} | " + " | ".join(cells) + f" | {verdict} |")
    lines += [
        "",
        f"Seeds: `train(..., jax.random.key({args.seed}), num_seeds={args.seeds})` (keys `split(key({args.seed}), {args.seeds})`); "
        f"outer optimizer: Adam {args.outer_learning_rate:g} after clipping the meta-gradient to global norm "
        f"{args.clip:g}; ES-family sigma {SIGMA}, nonfinite='drop'. Every run keeps its last theta, except "
        + ", ".join(sorted(SELECT_BEST))
        + ": per seed, the theta of the evaluation (every --eval-every outer steps) with the best "
        "meta-validation objective (8 MLP-family tasks of other keys than the test tasks), at the outer steps "
        "under 'kept'.",
        f"Command: `python experiments/learned_optimizer.py --seeds {args.seeds} --minutes {args.minutes:g}`, "
        f"jax {jax.__version__} on {jax.devices()[0]}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=5.0, help="outer-step budget per run")
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--outer-learning-rate", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--only", type=str, default=",".join(RUNS))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="ignore the cached baselines and runs")
    parser.add_argument("--table-only", action="store_true", help="the table from the cached runs, no plot")
    args = parser.parse_args()
    out = results_dir(STUDY)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    if args.fresh:
        for name in os.listdir(os.path.join(out, "runs")):
            os.remove(os.path.join(out, "runs", name))
        if os.path.exists(os.path.join(out, "baselines.json")):
            os.remove(os.path.join(out, "baselines.json"))
    tuned = baselines(args.horizon, os.path.join(out, "baselines.json"))
    results = {}
    for run in args.only.split(","):
        path = os.path.join(out, "runs", f"{run}.json")
        if args.table_only and not os.path.exists(path):
            print(f"{run}: not run yet, left out of the table", flush=True)
            continue
        results[run] = meta_train(run, args, path)
        print(
            run, {w: np.mean([s["final_train_loss"] for s in v]) for w, v in results[run]["scores"].items()}, flush=True
        )
    # the best PES-trained (b), run and seed, by the mean held-out final loss at the horizon
    where = [f"{s}@{args.horizon}" for s in SUITES]
    candidates = [
        (np.mean([r["scores"][w][i]["final_train_loss"] for w in where]), run, i)
        for run, r in results.items()
        if RUNS[run][:2] == ("adam-mlp", "pes")
        for i in range(len(r["theta"]))
    ]
    if candidates:
        score, run, seed = min(candidates)
        print(f"saving {run}, seed {seed} (mean held-out final loss {score:.4f}) as learned_optimizer.npz", flush=True)
        theta = {k: jnp.asarray(v, jnp.float32) for k, v in results[run]["theta"][seed].items()}
        lopt.save(os.path.join(out, "learned_optimizer.npz"), theta, architecture("adam-mlp"))
    if not args.table_only:
        plot(results, tuned, args.horizon, os.path.join(out, "curves.png"))
    publish(STUDY, table(results, tuned, args))


if __name__ == "__main__":
    main()
