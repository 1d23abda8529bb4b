"""A training run for ``tests/test_resume.py`` to kill: ``python tests/resume_worker.py
CHECKPOINT OUT STEPS`` trains PES on a small system with a checkpoint every 3 outer
steps and writes theta and the history to OUT (``.npz``) when done. Exit code 3 means
``TrainingInterrupted`` (SIGINT / SIGTERM: the run was saved)."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (XLA_FLAGS must be set first)

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import unroll  # noqa: E402
from tests.stochastic import THETA, linear_quadratic  # noqa: E402


def main(checkpoint: str, out: str, steps: int) -> int:
    system = linear_quadratic(7)
    estimator = unroll.pes(system, truncation=3, sigma=0.1, num_particles=4, num_workers=3)
    try:
        theta, history = unroll.train(
            estimator,
            optax.adam(1e-2),
            jnp.asarray(THETA),
            jax.random.key(0),
            steps,
            num_seeds=2,
            eval_fn=lambda th: {"norm": jnp.sum(th**2)},
            eval_every=7,
            progress=False,
            checkpoint=checkpoint,
            checkpoint_every=3,
        )
    except unroll.TrainingInterrupted as err:
        print(err, file=sys.stderr)
        return 3
    np.savez(out, theta=np.asarray(theta), **history)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
