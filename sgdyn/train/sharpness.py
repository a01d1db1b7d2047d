"""Sharpness: the top eigenvalue of the Hessian of a loss, by power iteration.

The Hessian is never formed: each iteration costs one Hessian-vector product

    H v = d/de grad L(w + e v) |_{e=0}         (forward-over-reverse: jax.jvp of jax.grad)

about 3 gradient evaluations. Units: loss per parameter^2 (nats, for cross-entropy).
Power iteration converges to the eigenvalue of largest *magnitude*; if that one is negative, a
second run on H - lambda_1 I (whose dominant eigenvalue is then lambda_max - lambda_1 >= 0)
recovers lambda_max. Both runs are jit- and vmap-compatible (the second is a ``lax.cond``, so
under ``vmap`` it costs a second run; map over seeds with ``lax.map`` to keep it lazy).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .. import _checks


def hvp(loss_fn: Callable, params, v):
    """Hessian-vector product H(params) v for a scalar ``loss_fn(params)``; v shaped like params."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def power_iteration(matvec: Callable, v0: jax.Array, num_iters: int):
    """Dominant eigenpair of a symmetric operator on flat vectors.

    Returns (rayleigh quotient v'Av, unit vector v) after ``num_iters`` multiplications.
    The eigenvalue error falls like (lambda_2 / lambda_1)^(2 k) after k iterations.
    """
    _checks.positive_int("num_iters", num_iters)

    def body(_, v):
        w = matvec(v)
        # tiny floor: a zero operator would otherwise give 0/0
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)

    v = v0 / jnp.linalg.norm(v0)
    v = jax.lax.fori_loop(0, num_iters, body, v)
    return jnp.vdot(v, matvec(v)), v


def top_hessian_eigenvalue(loss_fn: Callable, params, key, num_iters: int = 100) -> jax.Array:
    """lambda_max of the Hessian of ``loss_fn`` at ``params`` (largest algebraic eigenvalue).

    ``key`` draws the random start vector (a start orthogonal to the top eigenvector has
    probability 0). ``num_iters`` multiplications per run. A start nearly orthogonal to the
    top eigenvector first settles near the next eigenvalue: on the five large-batch MNIST-1D
    MLPs of ``experiments/large_batch.py``, 3 starts each, 20 iterations left one of 15 estimates
    13% low (3.91 against 4.51) and the others within 0.1%; 50 and more gave 4-5 digits for all.
    """
    _checks.positive_int("num_iters", num_iters)
    flat, unravel = ravel_pytree(params)
    f = lambda x: loss_fn(unravel(x))  # noqa: E731  (flat view: one vector, one norm)
    matvec = lambda v: hvp(f, flat, v)  # noqa: E731
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    lam1, _ = power_iteration(matvec, v0, num_iters)

    def shifted(_):
        lam, _v = power_iteration(lambda v: matvec(v) - lam1 * v, v0, num_iters)
        return lam + lam1

    return jax.lax.cond(lam1 < 0, shifted, lambda _: lam1, None)
