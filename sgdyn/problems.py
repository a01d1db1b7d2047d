r"""Finite-sum problems L(w) = (1/n) sum_i l_i(w): the landscapes real minibatch SGD runs on.

A problem is a landscape (``loss``, ``grad``, ``minimum``, ``dim``) plus the static example count
``n`` and ``batch_grad(x, idx)``, the mean gradient over the examples ``idx``. Per-example
gradient noise is what makes SGD's covariance C(w) = Cov_i[grad l_i(w)] (THEORY.md section 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._pytree import pytree_dataclass, static_field
from .landscapes import Landscape
from .ordered import ordered_dot, ordered_sum


class FiniteSum(Landscape):
    """Mixin: full loss and gradient as means over the n examples."""

    n: int

    def batch_grad(self, x, idx):
        grads = jax.vmap(jax.grad(self.example_loss), in_axes=(None, 0))(x, idx)
        return ordered_sum(grads, axis=0) / idx.shape[0]

    def example_grads(self, x):
        """All n per-example gradients at x, shape (n, d)."""
        return jax.vmap(lambda i: self.batch_grad(x, i[None]))(jnp.arange(self.n))

    def loss(self, x):
        losses = jax.vmap(lambda i: self.example_loss(x, i))(jnp.arange(self.n))
        return ordered_sum(losses) / self.n

    def grad(self, x):
        return self.batch_grad(x, jnp.arange(self.n))


def _centred_with_variance(z: np.ndarray, variance: float) -> np.ndarray:
    """Rows z_i made exactly centred with covariance (1/n) sum_i z_i z_i' = variance * I."""
    z = z - z.mean(axis=0)
    if z.shape[1] == 1:
        return z * np.sqrt(variance / np.mean(z**2, axis=0))
    # whiten: the sample covariance's inverse square root takes out its cross terms too
    eig, vec = np.linalg.eigh(z.T @ z / z.shape[0])
    return z @ (vec * np.sqrt(variance / eig)) @ vec.T


@pytree_dataclass
class SyntheticPLD(FiniteSum):
    r"""The finite-sum problem whose minibatch noise is exactly the PLD's local form:

        l_i(w) = L(w) + eps_i . (w - a) + (1/2) delta_i |w - a|^2

    with eps and delta centred over i, Cov(eps) = sigma_g I, Var(delta) = sigma_H, uncorrelated
    (exactly, not just in expectation: the moments over the n examples, so n >= d + 2). The
    mean loss is the base landscape L and the per-example gradient covariance is
    C(w) = sigma_g I + sigma_H (w - a)(w - a)'; in 1-D C(x) = sigma_g + sigma_H x^2 (THEORY.md
    section 2).
    """

    base: object
    eps: jax.Array  # (n, d)
    delta: jax.Array  # (n,)
    n: int = static_field(default=1)

    @staticmethod
    def make(base, sigma_g, sigma_h, n: int, seed: int = 0) -> "SyntheticPLD":
        for name, value in (("sigma_g", sigma_g), ("sigma_h", sigma_h)):
            if np.ndim(value):  # a vector sigma_g gave V diag(sigma_g) V', V the data's basis
                raise ValueError(f"{name} must be one number (C = sigma_g I + sigma_H dx dx'), "
                                 f"got shape {np.shape(value)}")
        _checks.positive("sigma_g", sigma_g)
        _checks.nonnegative("sigma_h", sigma_h)
        n = _checks.positive_int("n", n)
        if n < base.dim + 2:  # d + 1 centred directions for eps, one more for delta
            raise ValueError(f"n must be >= dim + 2 = {base.dim + 2} for a finite-sum problem "
                             f"with this noise, got {n}")
        rng = np.random.default_rng(seed)
        eps = _centred_with_variance(rng.standard_normal((n, base.dim)), sigma_g)
        delta = rng.standard_normal(n)
        delta -= delta.mean()
        # remove the component along each eps coordinate so that Cov(eps, delta) = 0 exactly
        q, _ = np.linalg.qr(np.column_stack([np.ones(n), eps]))
        delta -= q @ (q.T @ delta)
        delta = delta * np.sqrt(sigma_h / np.mean(delta**2)) if sigma_h > 0 else 0 * delta
        return SyntheticPLD(base, jnp.asarray(eps), jnp.asarray(delta), n)

    @property
    def dim(self):
        return self.base.dim

    @property
    def minimum(self):
        return self.base.minimum

    def example_loss(self, x, i):
        dx = x - self.base.minimum
        return (self.base.loss(x) + ordered_dot(self.eps[i], dx)
                + 0.5 * self.delta[i] * ordered_dot(dx, dx))

    def batch_grad(self, x, idx):
        dx = x - self.base.minimum
        b = idx.shape[0]
        return (self.base.grad(x) + ordered_sum(self.eps[idx], axis=0) / b
                + ordered_sum(self.delta[idx]) / b * dx)

    def loss(self, x):
        return self.base.loss(x)

    def grad(self, x):
        return self.base.grad(x)


@pytree_dataclass
class LeastSquares(FiniteSum):
    """l_i(w) = (1/2) (x_i . w - y_i)^2 on data (X, y); a small real regression problem."""

    X: jax.Array  # (n, d)
    y: jax.Array  # (n,)
    n: int = static_field(default=1)

    @staticmethod
    def generate(n: int, dim: int = 1, noise: float = 0.5, seed: int = 0) -> "LeastSquares":
        """Gaussian inputs, a random teacher w*, targets x . w* + noise * N(0, 1)."""
        n = _checks.positive_int("n", n)
        dim = _checks.positive_int("dim", dim)
        _checks.nonnegative("noise", noise)
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((n, dim))
        y = X @ rng.standard_normal(dim) + noise * rng.standard_normal(n)
        return LeastSquares(jnp.asarray(X), jnp.asarray(y), n)

    @property
    def dim(self):
        return self.X.shape[1]

    def example_loss(self, x, i):
        return 0.5 * (ordered_dot(self.X[i], x) - self.y[i]) ** 2

    def batch_grad(self, x, idx):
        X = self.X[idx]
        return ordered_sum(X * (ordered_dot(X, x) - self.y[idx])[:, None], axis=0) / idx.shape[0]

    @property
    def minimum(self):
        return jnp.linalg.lstsq(self.X, self.y)[0]


def gradient_noise_covariance(problem, x):
    """C(x) = (1/n) sum_i (g_i - g)(g_i - g)': the per-example gradient covariance at x."""
    g = problem.example_grads(jnp.asarray(x, float))
    g = g - g.mean(axis=0)
    return g.T @ g / problem.n


def pld_parameters(problem):
    """(sigma_g, sigma_H) of a 1-D finite-sum problem at its minimum a: C(a) and Var_i(h_i(a)).

    h_i is the per-example curvature; these are the PLD's local-form parameters.
    """
    if problem.dim != 1:
        raise ValueError(f"pld_parameters needs a 1-D problem, got dim={problem.dim}")
    return _pld_parameters(problem)


@jax.jit  # one compiled call instead of a tiny compiled program per eager operation
def _pld_parameters(problem):
    a = problem.minimum
    g = problem.example_grads(a)[:, 0]
    h = jax.vmap(lambda i: jax.jacfwd(lambda w: problem.batch_grad(w, i[None]))(a)[0, 0])(
        jnp.arange(problem.n))
    return jnp.var(g), jnp.var(h)
