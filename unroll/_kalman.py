r"""The damped Newton step of ELK (Gonzalez et al. 2024): a linear-Gaussian smoother over
time, by associative scans (private to ``unroll.parallel``).

DEER's Newton step solves the linearized recurrence $x_t = J_t x_{t-1} + u_t$ exactly
(``u_t = f_t(\bar x_{t-1}) - J_t \bar x_{t-1}`` at the current iterate $\bar x$, $x_{-1}$
fixed). The Levenberg-Marquardt step instead minimizes

$$
\sum_{t<T} \lVert x_t - J_t x_{t-1} - u_t \rVert^2 + \frac{1}{\sigma^2} \sum_{t<T} \lVert x_t - \bar x_t \rVert^2,
$$

which is the posterior mean of a linear-Gaussian state-space model: dynamics
$x_t = J_t x_{t-1} + u_t + w_t$, $w_t \sim N(0, I)$, observations $\bar x_t = x_t + v_t$,
$v_t \sim N(0, \sigma^2 I)$. As $\sigma^2 \to \infty$ it is DEER's step; as
$\sigma^2 \to 0$ it stays at $\bar x$. The smoothed means come from

* the filter in parallel (Särkkä & García-Fernández 2021): every step is an element
  $(A, b, C, \eta, J)$ (the conditional $p(x_t \mid \bar x_t, x_{t-1}) = N(A x_{t-1} + b, C)$
  and the likelihood of $x_{t-1}$ in information form $(\eta, J)$), composed associatively as

  $$
  M = I + C_1 J_2,\quad A = A_2 M^{-1} A_1,\quad b = A_2 M^{-1}(b_1 + C_1 \eta_2) + b_2,\quad
  C = A_2 M^{-1} C_1 A_2^\top + C_2,
  $$
  $$
  \eta = A_1^\top M^{-\top}(\eta_2 - J_2 b_1) + \eta_1,\quad J = A_1^\top M^{-\top} J_2 A_1 + J_1,
  $$

  whose prefixes hold the filtered means $m_t$ ($b$) and covariances $P_t$ ($C$);
* the Rauch-Tung-Striebel smoother, the reverse linear recurrence
  $\hat x_t = E_t \hat x_{t+1} + m_t - E_t (J_{t+1} m_t + u_{t+1})$,
  $E_t = P_t J_{t+1}^\top (J_{t+1} P_t J_{t+1}^\top + I)^{-1}$ ($E_{T-1} = 0$).

With diagonal $J_t$ (quasi-ELK) every matrix is diagonal and the same formulas hold
elementwise. The step's fixed point is DEER's: at a solution $\bar x$ of the recurrence,
$u_t + J_t \bar x_{t-1} = \bar x_t$ and the smoother returns $\bar x$.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class _Ops(NamedTuple):
    """Products of the scan's matrices: dense ``[..., n, n]`` or diagonal ``[..., n]``."""

    matmul: object  # A @ B
    matvec: object  # A @ v
    transpose: object
    solve: object  # M^{-1} B (B a matrix)
    eye: object  # the identity like a given matrix


_DENSE = _Ops(
    matmul=lambda a, b: a @ b,
    matvec=lambda a, v: jnp.einsum("...ij,...j->...i", a, v),
    transpose=lambda a: jnp.swapaxes(a, -1, -2),
    solve=jnp.linalg.solve,
    eye=lambda a: jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape),
)
_DIAGONAL = _Ops(
    matmul=lambda a, b: a * b,
    matvec=lambda a, v: a * v,
    transpose=lambda a: a,
    solve=lambda m, b: b / m,
    eye=jnp.ones_like,
)


def _combine(ops: _Ops):
    """The filter elements' associative operation, ``later o earlier``."""

    def combine(earlier, later):
        a1, b1, c1, eta1, j1 = earlier
        a2, b2, c2, eta2, j2 = later
        m = ops.eye(c1) + ops.matmul(c1, j2)
        w = ops.transpose(ops.solve(ops.transpose(m), ops.transpose(a2)))  # A_2 M^{-1}
        z = ops.solve(m, a1)  # M^{-1} A_1, so A_1^T M^{-T} = z^T
        a = ops.matmul(w, a1)
        b = ops.matvec(w, b1 + ops.matvec(c1, eta2)) + b2
        c = ops.matmul(ops.matmul(w, c1), ops.transpose(a2)) + c2
        eta = ops.matvec(ops.transpose(z), eta2 - ops.matvec(j2, b1)) + eta1
        j = ops.matmul(ops.matmul(ops.transpose(z), j2), a1) + j1
        return a, b, c, eta, j

    return combine


def smoother(
    jacobians: jax.Array, bias: jax.Array, iterate: jax.Array, variance: jax.Array, diagonal: bool
) -> tuple[jax.Array, jax.Array]:
    r"""The Levenberg-Marquardt step of the linearized recurrence, as the smoother's reverse recurrence.

    The step $\hat x$ solves $\hat x_t = E_t \hat x_{t+1} + g_t$ from the end ($E_{T-1} = 0$); the caller runs
    that linear recurrence (`unroll.parallel`).

    Args:
      jacobians: $J_t$, `[T, n, n]`, or `[T, n]` with `diagonal`; $J_0$ must be zero ($x_{-1}$ is fixed, its term is
        in $u_0$).
      bias: $u_t$, `[T, n]` (with $u_0 = f_0(x_{-1})$).
      iterate: the current iterate $\bar x$, `[T, n]`, the observations.
      variance: $\sigma^2 > 0$, a scalar: how far the step may leave $\bar x$ ($\infty$: DEER's step).
      diagonal: whether `jacobians` are diagonals (quasi-ELK).

    Returns:
      `(E, g)`: $E_t$ (`jacobians`' shape) and $g_t$ (`[T, n]`).
    """
    ops = _DIAGONAL if diagonal else _DENSE
    gain = 1 / (1 + variance)  # the Kalman gain of an observation whose prior variance is 1 (the process noise)
    keep = variance * gain  # 1 - gain
    innovation = iterate - bias
    ones = ops.eye(jacobians)
    elements = (
        keep * jacobians,
        bias + gain * innovation,
        keep * ones,
        gain * ops.matvec(ops.transpose(jacobians), innovation),
        gain * ops.matmul(ops.transpose(jacobians), jacobians),
    )
    _, means, covariances, _, _ = jax.lax.associative_scan(_combine(ops), elements)
    # the smoother: x_t = E_t x_{t+1} + g_t, from the end
    after, after_bias = jacobians[1:], bias[1:]
    filtered, spread = means[:-1], covariances[:-1]
    if diagonal:
        gains = spread * after / (after * spread * after + 1)
    else:
        predicted = after @ spread @ ops.transpose(after) + ops.eye(spread)
        gains = ops.transpose(jnp.linalg.solve(predicted, after @ spread))  # P J^T S^{-1} (P, S symmetric)
    offsets = filtered - ops.matvec(gains, ops.matvec(after, filtered) + after_bias)
    return jnp.concatenate([gains, jnp.zeros_like(gains[:1])]), jnp.concatenate([offsets, means[-1:]])
