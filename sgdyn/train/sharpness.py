"""Sharpness: the top eigenvalue of the Hessian of a loss, by Lanczos iteration.

The Hessian is never formed: each iteration costs one Hessian-vector product

    H v = d/de grad L(w + e v) |_{e=0}         (forward-over-reverse: jax.jvp of jax.grad)

about 3 gradient evaluations. Units: loss per parameter^2 (nats, for cross-entropy).
k Lanczos steps build an orthonormal basis of the Krylov space span(v, Hv, ..., H^(k-1) v)
and the tridiagonal projection T of H on it; the largest eigenvalue of T approaches the
largest algebraic eigenvalue of H far faster than power iteration with the same k products,
and it does so even when a negative eigenvalue is larger in magnitude. ``power_iteration``
(the dominant eigenpair, by magnitude) is kept for operators where that is what is wanted.
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


def _unit_start(v0):
    """v0 / |v0|, or a ValueError where v0 is concretely zero (it would give 0/0: NaN)."""
    norm = jnp.linalg.norm(v0)
    if _checks.is_concrete(norm):
        if not jnp.isfinite(norm):
            raise ValueError("v0 must be finite (no NaN or inf)")
        if norm == 0:
            raise ValueError("v0 must be a non-zero vector (the iteration's start)")
    return v0 / norm


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

    v = jax.lax.fori_loop(0, num_iters, body, _unit_start(v0))
    return jnp.vdot(v, matvec(v)), v


def lanczos_top_eigenvalue(matvec: Callable, v0: jax.Array, num_iters: int):
    """Largest algebraic eigenvalue of a symmetric operator on flat vectors: the top Ritz value
    after ``num_iters`` Lanczos steps (at most the dimension), with full reorthogonalisation
    (memory: num_iters + 1 vectors).

    The steps stop early once the Krylov space is invariant: when what is left of A v_j after
    orthogonalisation is below sqrt(eps) |A v_j| (an operator with fewer distinct eigenvalues
    than steps, e.g. a low-rank or isotropic Hessian). The Ritz values are then eigenvalues of
    A (to that tolerance), and a further step would normalise rounding noise into a basis
    vector that is not orthogonal to the others, giving values outside A's spectrum."""
    _checks.positive_int("num_iters", num_iters)
    k = min(int(num_iters), v0.shape[0])  # the Krylov space cannot outgrow the dimension
    basis = jnp.zeros((k + 1, v0.shape[0]), v0.dtype).at[0].set(_unit_start(v0))
    diag, off = jnp.zeros(k, v0.dtype), jnp.zeros(k, v0.dtype)
    tol = jnp.sqrt(jnp.finfo(v0.dtype).eps)

    def body(j, carry):
        basis, diag, off, live = carry
        w = matvec(basis[j])
        a = jnp.vdot(basis[j], w)
        scale = jnp.linalg.norm(w)
        # Gram-Schmidt against every earlier vector, twice: in float32 the three-term
        # recurrence alone loses orthogonality and repeats converged eigenvalues (the rows
        # past j are still zero, so the whole basis serves)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        b = jnp.linalg.norm(w)
        more = live & (b > tol * scale)  # else the space is invariant: stop here
        basis = basis.at[j + 1].set(jnp.where(more, w / jnp.maximum(b, jnp.finfo(w.dtype).tiny),
                                              0.0))
        # a step after the stop adds a decoupled row holding diag[0], a Rayleigh quotient of
        # the space found, so it cannot raise the top Ritz value
        return (basis, diag.at[j].set(jnp.where(live, a, diag[0])),
                off.at[j].set(jnp.where(more, b, 0.0)), more)

    _, diag, off, _ = jax.lax.fori_loop(0, k, body, (basis, diag, off, jnp.bool_(True)))
    t = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    return jnp.linalg.eigvalsh(t)[-1]


def top_hessian_eigenvalue(loss_fn: Callable, params, key, num_iters: int = 20) -> jax.Array:
    """lambda_max of the Hessian of ``loss_fn`` at ``params`` (largest algebraic eigenvalue),
    by ``num_iters`` Lanczos steps (one Hessian-vector product each) from a random start.

    ``key`` draws the start vector. Measured on the five large-batch MNIST-1D MLPs of
    ``experiments/large_batch.py`` (15 starts, against 1000 power iterations): 20 steps agree
    to 6e-7 relative for every start, 10 steps for all but one (0.3% low). Power iteration
    with 20 products had left that start 13% low, still near the second eigenvalue.
    """
    _checks.positive_int("num_iters", num_iters)
    flat, unravel = ravel_pytree(params)
    f = lambda x: loss_fn(unravel(x))  # noqa: E731  (flat view: one vector, one norm)
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    return lanczos_top_eigenvalue(lambda v: hvp(f, flat, v), v0, num_iters)
