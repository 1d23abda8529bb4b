"""Real-time recurrent learning and SnAp.

RTRL (Williams & Zipser 1989) carries the influence ``J_t = d s_t / d theta``
(``N x p`` on the state's real view) through the episode:
``dl_t/dtheta = dl/dtheta + dl/ds J_t`` and ``J_{t+1} = ds'/ds J_t + ds'/dtheta``, from
``J_0 = d s_0 / d theta`` (zero unless ``init`` uses theta). Exact, online, no
truncation. Stored densely (``O(N p)``; ``N`` vjps and one matmul per step) or, where the
step is structurally sparse (``influence_pattern``), compressed into ``C`` colour groups
of columns that touch disjoint units (``O(C N)``; ``C`` jvps per step), which makes
element-wise recurrences ``O(n)`` per step. SnAp-n (Menick et al. 2020) keeps the
entries reached in ``n`` steps. The influence is the accumulator (``state.acc``):
``[W, 1, N, p]`` dense, ``[W, 1, C, N]`` compressed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll._constructor import check_window, keyword_only
from unroll._errors import BadType, BadValue
from unroll._system import (
    check_positive_int,
    inexact_leaves,
    real_parts,
    real_view,
)
from unroll.builder import windowed
from unroll.contract import EpisodeStart, Estimator, Rule, Step
from unroll.estimators._sparsity import InfluencePattern, influence_pattern, initial_influence, step_jacobians

__all__ = ["RTRLState", "influence_pattern", "rtrl", "snap"]


class RTRLState(NamedTuple):
    """The accumulator of one RTRL (and SnAp) trajectory."""

    influence: jax.Array  # d state / d theta: [N, p] dense, or [C, N] compressed by colour (SnAp: masked)


def _dense_influence_rule(system, mask):
    """RTRL on the dense ``[N, p]`` influence: ``J' = ds'/ds J + ds'/dtheta`` from ``N``
    vjps and one matmul per step (times ``mask`` for SnAp)."""
    masked = (lambda x: x) if mask is None else (lambda x: x * jnp.asarray(mask, x.dtype))

    def start(theta, key, noise_key, _):
        state, influence = initial_influence(system, theta, key)
        return EpisodeStart(state, RTRLState(masked(influence)))

    def step(theta, state, t, acc, _):
        influence = acc.influence
        new_state, loss, d_state, d_theta, dl_dstate, dl_dtheta = step_jacobians(system, theta, state, t)
        gradient = ravel_pytree(theta)[1](dl_dtheta + dl_dstate @ influence)  # the influence before the update
        return Step(new_state, RTRLState(masked(d_state @ influence + d_theta)), loss, gradient)

    return Rule(start, step)


def _compressed_influence_rule(system, pattern: InfluencePattern):
    """RTRL on the compressed influence ``[C, N]``: row ``k`` is ``J E_k``, ``E_k`` the sum of
    the basis directions of colour ``k``. Since the columns of a colour touch disjoint
    units, ``J' E_k = ds'/ds (J E_k) + ds'/dtheta E_k`` is one jvp (``C`` jvps per step,
    vmapped), masked to the kept entries. The gradient ``dl/dtheta + dl/ds J`` is one vjp
    and a segment sum of ``dl/ds * J E_k`` by owner."""
    p = pattern.color.size
    owner = pattern.owner.ravel()  # numpy: the rule is cached across traces, so it holds no jax arrays
    kept = pattern.owner < p  # [C, N]

    def directions(flat):
        return jnp.asarray(pattern.color[None, :] == np.arange(pattern.num_colors)[:, None], flat.dtype)

    def start(theta, key, noise_key, _):
        flat, unravel = ravel_pytree(theta)

        def init(flat):
            state = system.init(unravel(flat), key)
            return ravel_pytree(real_parts(inexact_leaves(state)))[0], state

        vector, linear, state = jax.linearize(init, flat, has_aux=True)
        influence = jax.vmap(linear)(directions(flat))
        return EpisodeStart(state, RTRLState(influence * jnp.asarray(kept, vector.dtype)))

    def step(theta, state, t, acc, _):
        influence = acc.influence
        flat, unravel = ravel_pytree(theta)
        vector, f = real_view(system, state)

        def h(p, v):
            new_vector, loss, new_state = f(unravel(p), v, t)
            return (new_vector, loss), new_state

        (_, loss), linear, new_state = jax.linearize(h, flat, vector, has_aux=True)
        tangent, _ = jax.vmap(linear)(directions(flat), influence)
        # dl/dtheta and dl/ds: the loss row of the same linearization, transposed
        zeros = jnp.zeros_like(vector)
        dl_dtheta, dl_dstate = jax.linear_transpose(linear, flat, vector)((zeros, jnp.ones_like(loss)))
        through_state = jax.ops.segment_sum((influence * dl_dstate).ravel(), owner, num_segments=p + 1)[:p]
        gradient = unravel(dl_dtheta + through_state.astype(dl_dtheta.dtype))
        return Step(new_state, RTRLState(tangent * jnp.asarray(kept, tangent.dtype)), loss, gradient)

    return Rule(start, step)


def _rule_factory(system, order: int | None, sparse: bool | None):
    """``rule(theta, key)``: RTRL, or SnAp-``order`` when ``order`` is given, on the dense or
    the compressed influence (``sparse``: ``None`` picks by
    ``influence_pattern(...).compressed``). The pattern and the rule are found once per
    theta structure (and key kind), at trace time."""
    name = "rtrl" if order is None else "snap"
    rules = {}

    def rule_for(theta, key):
        spec = (
            jax.tree_util.tree_structure(theta),
            tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(theta)),
            getattr(jnp.asarray(key), "dtype", None) if key is not None else None,
        )
        if spec not in rules:
            pattern = influence_pattern(system, theta, key, order)
            if pattern is None and (order is not None or sparse):
                raise BadValue(
                    f"`{name}`{' with sparse=True' if sparse else ''} needs the sparsity pattern of the step "
                    "Jacobians at trace time, and this system's init/step could not run on concrete values "
                    "(do they close over traced arrays?). Build the system from concrete arrays"
                    + (", or use rtrl(..., sparse=False)." if order is None else ".")
                )
            compress = pattern is not None and (pattern.compressed if sparse is None else sparse)
            if compress:
                rules[spec] = _compressed_influence_rule(system, pattern)
            else:
                rules[spec] = _dense_influence_rule(system, None if order is None else pattern.mask)
        return rules[spec]

    return rule_for


@keyword_only
def rtrl(system, *, truncation: int, num_workers: int = 1, sparse: bool | None = None) -> Estimator:
    r"""Real-time recurrent learning (Williams & Zipser 1989): exact, online, no truncation.

    Carries the influence $J_t = \frac{d s_t}{d \theta}$ ($N \times p$ on the state's real
    view) across windows, reset with episodes (from $J_0 = \frac{d s_0}{d \theta}$, zero
    unless `init` uses theta), and uses it for each step's total derivative through the
    whole episode so far:

    $$
    \frac{d\ell_t}{d\theta} = \frac{\partial \ell_t}{\partial \theta}
        + \frac{\partial \ell_t}{\partial s_t} J_t,
    \qquad
    J_{t+1} = \frac{\partial s_{t+1}}{\partial s_t} J_t + \frac{\partial s_{t+1}}{\partial \theta},
    \qquad
    g = \frac{1}{K} \sum_{k<K} \frac{d\ell_{t+k}}{d\theta},
    $$

    averaged over workers. At a fixed theta, the mean of the windows of an episode is the
    exact episode gradient (no truncation bias).

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`.
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); it sets how often
            an estimate is returned, not a truncation of the gradient.
        num_workers: $W$, independent trajectories, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        sparse: how $J$ is stored and updated (the results are the same). `False`: dense
            $[N, p]$, $N$ vjps and an $[N, N] \times [N, p]$ product per step, $O(N p)$
            memory. `True`: compressed by the structural sparsity of the step
            (`influence_pattern`) into $C$ colour groups of columns that touch disjoint
            units, $C$ jvps per step and $[C, N]$ stored, which for element-wise (diagonal,
            possibly complex) recurrences such as LRU layers costs $O(n)$ per parameter
            vector instead of $O(n^2 p)$ (Zucchet et al. 2023). `None` (default): the
            compressed layout when it needs no more jvps than the dense one needs vjps
            ($C \le N$). The pattern is found at trace time, once per theta structure.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        accumulator `acc` is the influence, $[W, 1, N, p]$ dense or $[W, 1, C, N]$
        compressed; `info` has `loss` and `steps` ($W K$).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, an argument has the wrong
            type, or `sparse` is not `True`, `False` or `None`.
        ValueError: `truncation` is out of $[1, T]$ or `num_workers` below 1; at trace time,
            `sparse=True` on a system whose `init`/`step` cannot run on concrete values.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    rule = _rule_factory(system, None, _check_sparse(sparse))
    return windowed(system, rule, truncation=truncation, num_workers=num_workers)


@keyword_only
def snap(system, *, truncation: int, num_workers: int = 1, order: int = 1, sparse: bool | None = None) -> Estimator:
    r"""SnAp-`order` (Menick et al. 2020): RTRL keeping the influence entries reached in `order` steps.

    RTRL (see `rtrl`) with the influence masked to the entries $(i, j)$ that parameter
    $j$ can reach within `order` steps (`influence_pattern(..., order=order).mask`):

    $$
    J_{t+1} = M \odot \Big(\frac{\partial s_{t+1}}{\partial s_t} J_t
        + \frac{\partial s_{t+1}}{\partial \theta}\Big),
    \qquad
    g = \frac{1}{K} \sum_{k<K} \Big(\frac{\partial \ell_{t+k}}{\partial \theta}
        + \frac{\partial \ell_{t+k}}{\partial s_{t+k}} J_{t+k}\Big),
    $$

    $M$ the mask. Biased where the mask drops entries: SnAp-1 is exact for element-wise
    (diagonal) recurrences; on a dense RNN SnAp-2 already keeps every entry (= RTRL).

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`;
            its `init` and `step` must run on concrete values (the sparsity pattern is found
            at trace time).
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); it sets how often
            an estimate is returned, not a truncation of the gradient.
        num_workers: $W$, independent trajectories, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean.
            Default 1.
        order: $n$, the steps of reach the kept pattern covers (an int $\ge 1$, default 1);
            `order=2` on a dense RNN keeps every entry (= `rtrl`).
        sparse: the influence's layout, as in `rtrl`: the compressed layout applies when the
            columns one step beyond the kept pattern colour with $C \le N$ colours (diagonal
            recurrences); otherwise (e.g. SnAp-1 of a dense RNN, whose next step touches
            every unit) the influence is stored densely and masked. `None` (default) picks.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        accumulator `acc` is the masked influence, $[W, 1, N, p]$ dense or $[W, 1, C, N]$
        compressed; `info` has `loss` and `steps` ($W K$).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, an argument has the wrong
            type, or `sparse` is not `True`, `False` or `None`.
        ValueError: `truncation` is out of $[1, T]$, a count is below 1; at trace time, a
            system whose `init`/`step` cannot run on concrete values.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    order = check_positive_int(
        order,
        "order",
        "It is the number of steps of reach SnAp keeps: use an int >= 1, e.g. order=1 (order=2 on a "
        "dense RNN keeps every entry, = rtrl).",
    )
    rule = _rule_factory(system, order, _check_sparse(sparse))
    return windowed(system, rule, truncation=truncation, num_workers=num_workers)


def _check_sparse(sparse):
    if sparse is not None and not isinstance(sparse, (bool, np.bool_)):
        raise BadType(
            f"`sparse` must be True, False or None, got {sparse!r}; pass sparse=None to pick the layout "
            "automatically, True for the compressed one, False for the dense one."
        )
    return None if sparse is None else bool(sparse)
