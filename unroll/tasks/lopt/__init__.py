r"""Learned optimizers (Andrychowicz et al. 2016; Wichrowska et al. 2017; Metz et al. 2019):
a per-parameter MLP that maps each inner parameter's features to its update, meta-trained
through the inner training run.

Features of inner parameter $w_i$ at step $t$: the gradient $g$, momenta
$m_b \leftarrow b\, m_b + (1 - b)\, g$ at decays $b$ = 0.5, 0.9, 0.99 (``DECAYS``), and
$w_i$ itself ($f = [g, m_{0.5}, m_{0.9}, m_{0.99}, w]$). The update is

$$u = W_\mathrm{out}[{:}H] \cdot \mathrm{relu}(W_1 \tilde f + b_1) + W_\mathrm{out}[H{:}] \cdot f
+ b_\mathrm{out}, \qquad w \leftarrow w - \mathrm{lr}\, u$$

with $\tilde f$ the features divided by their root mean square over all parameters
(scale free) and $f$ the raw features (a linear skip path). With
$W_\mathrm{out}[{:}H] = 0$, $W_\mathrm{out}[H{:}] = (c, 0, 0, 0, 0)$ and
$b_\mathrm{out} = 0$ this is SGD with learning rate $\mathrm{lr}\, c$ (``sgd_theta``),
where meta-training starts by default.

That is architecture (a), ``"mlp"``. ``ARCHITECTURES`` also has (b) ``"adam-mlp"``, a
per-parameter MLP on Adam's features (bias-corrected momenta and second moments, their
ratios, training progress) with a direction and a log-magnitude head, initialized at
Adam; and (c) ``"controller"``, a small network that sets each layer's learning rate and
momentum from training features. Each is an ``Architecture`` of pure functions on a flat
parameter vector; ``as_optax(theta, architecture)`` exports a meta-trained one as an
``optax.GradientTransformation`` on any pytree, and ``save`` / ``load`` (``read``) store it
in a ``.npz`` with its architecture and settings.

Inner problems (``inner_problem``, built in ``unroll.tasks.inner``): ``"digits"`` (a
64-32-10 tanh MLP on scikit-learn's digits, minibatches of 64, a fresh random init per
episode), ``"quadratic"`` (a random 20-dimensional quadratic $\frac{1}{2} w^\top A w$ per
episode, eigenvalues log-uniform in $[0.01, 1]$), ``"digits-mlp-family"`` (MLPs whose
depth, widths, activation, init scale and batch size are drawn per episode, padded to the
widest with a ``Layout.mask``) and ``"digits-conv"`` (a small convolutional network, a
held-out architecture). The step loss is the inner training loss at the current
parameters (the minibatch loss for digits) through the task's loss normalizer: capped at
its ceiling, and a run that passes it freezes (``learned_optimizer``).
``baseline_optimizer`` and ``tune_baseline`` give Adam (constant or cosine) and SGD with
momentum on the same tasks, tuned by grid.
"""

from unroll.tasks.lopt._architectures import (
    ARCHITECTURES,
    BETA1,
    BETA2,
    DECAYS,
    TIMESCALES,
    Architecture,
    Layout,
    adam_mlp_optimizer,
    controller_optimizer,
    get_architecture,
    learned_update,
    mlp_optimizer,
    pytree_layout,
    sgd_theta,
    sizes_layout,
)
from unroll.tasks.lopt._baselines import (
    BASELINES,
    DEFAULT_ESTIMATORS,
    adam_baseline,
    adam_system,
    baseline_optimizer,
    lopt_digits_setup,
    lopt_quadratic_setup,
    tune_baseline,
)
from unroll.tasks.lopt._export import FILE_FORMAT, LearnedOptimizerState, as_optax, load, read, save
from unroll.tasks.lopt._meta import (
    LOG_FLOOR,
    META_LOSSES,
    PROBLEMS,
    InnerState,
    final_metrics,
    inner_layout,
    inner_problem,
    learned_optimizer,
    run_length,
)

__all__ = [
    # architectures
    "ARCHITECTURES",
    "Architecture",
    "BETA1",
    "BETA2",
    "DECAYS",
    "Layout",
    "TIMESCALES",
    "adam_mlp_optimizer",
    "controller_optimizer",
    "get_architecture",
    "learned_update",
    "mlp_optimizer",
    "pytree_layout",
    "sgd_theta",
    "sizes_layout",
    # optax export and files
    "FILE_FORMAT",
    "LearnedOptimizerState",
    "as_optax",
    "load",
    "read",
    "save",
    # the meta-training system
    "InnerState",
    "LOG_FLOOR",
    "META_LOSSES",
    "PROBLEMS",
    "final_metrics",
    "inner_layout",
    "inner_problem",
    "learned_optimizer",
    "run_length",
    # baselines and the command line's tasks
    "BASELINES",
    "DEFAULT_ESTIMATORS",
    "adam_baseline",
    "adam_system",
    "baseline_optimizer",
    "lopt_digits_setup",
    "lopt_quadratic_setup",
    "tune_baseline",
]
