r"""Gradient-noise models: the per-example covariance C(w) of THEORY.md section 2.

A noise model returns a factor S(w) with C(w) = S S' as a scalar (C = S^2 I), a vector
(C = diag(S^2)) or a matrix; the SDE scales it by sqrt(lr / b). Units: C has units of
(loss / parameter)^2, like a squared gradient.

    Isotropic.make(sigma2):                     C = sigma2 I     (Langevin, SGLD-like)
    HessianNoise.make(landscape, sigma2):       C = sigma2 H(a)  (anisotropic, constant)
    PLDLocal.make(sigma_g, sigma_h, shape):     C = (sigma_g + sigma_H |w - a|^2) M
    PLDLoss.make(landscape, sigma_g, sigma_h):  C = (sigma_g + (2 sigma_H / h_a) max(L(w) - L(a), 0)) M

M is the identity unless ``shape`` is given (a fixed positive-definite matrix's Cholesky
factor). In PLDLoss the excess loss is clipped at 0 so C stays >= sigma_g where the loss dips
below L(a) beyond a saddle; in an isotropic quadratic basin the two PLD forms agree (with
anisotropic curvatures h_a is their mean, so they differ off the axes of mean curvature).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._pytree import pytree_dataclass
from .ordered import ordered_dot


def _shape_factor(shape):
    if shape is None:
        return None
    m = np.asarray(_checks.finite("shape", shape), float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.allclose(m, m.T):
        raise ValueError(f"shape must be a symmetric square matrix, got {m.tolist()}")
    eig = np.linalg.eigvalsh(m)
    if not np.all(eig > 0):  # Cholesky would return NaN, and every particle would diverge
        raise ValueError(f"shape must be positive-definite, got eigenvalues {eig.tolist()}")
    return jnp.linalg.cholesky(jnp.asarray(m))


def _apply_shape(scale, shape_chol):
    return scale if shape_chol is None else scale * shape_chol


@pytree_dataclass
class Isotropic:
    """C = sigma2 I. With lr and b, Langevin at temperature T = lr sigma2 / (2 b)."""

    sigma2: jax.Array

    @staticmethod
    def make(sigma2) -> "Isotropic":
        _checks.positive("sigma2", _checks.scalar("sigma2", sigma2))
        return Isotropic(jnp.asarray(sigma2, float))

    def factor(self, landscape, x):
        return jnp.sqrt(self.sigma2)


@pytree_dataclass
class HessianNoise:
    """C = sigma2 H(a): constant noise shaped like the curvature at the minimum."""

    sigma2: jax.Array
    hessian_sqrt: jax.Array  # (d, d) Cholesky factor of H(a)

    @staticmethod
    def make(landscape, sigma2) -> "HessianNoise":
        _checks.positive("sigma2", _checks.scalar("sigma2", sigma2))
        _one_landscape("HessianNoise", landscape)
        eig, chol = _hessian_at_minimum(landscape)
        if not np.all(np.asarray(eig) > 0):
            raise ValueError(f"HessianNoise needs a positive-definite Hessian at the minimum, "
                             f"got eigenvalues {eig}")
        return HessianNoise(jnp.asarray(sigma2, float), chol)

    def check_landscape(self, landscape) -> None:
        """ValueError unless H(a) is the one this noise was made with (``SDE.make`` asks)."""
        reference = _per_member(_hessian_at_minimum, landscape, np.ndim(self.hessian_sqrt) - 2)
        if reference is not None:
            _same_reference("HessianNoise", "Hessian", (self.hessian_sqrt,), (reference[1],))

    def factor(self, landscape, x):
        return jnp.sqrt(self.sigma2) * self.hessian_sqrt


@pytree_dataclass
class PLDLocal:
    """C = (sigma_g + sigma_H |w - a|^2) M, a = the landscape's minimum."""

    sigma_g: jax.Array
    sigma_h: jax.Array
    shape_chol: jax.Array | None = None

    @staticmethod
    def make(sigma_g, sigma_h, shape=None) -> "PLDLocal":
        _checks.positive("sigma_g", _checks.scalar("sigma_g", sigma_g))
        _checks.nonnegative("sigma_h", _checks.scalar("sigma_h", sigma_h))
        return PLDLocal(jnp.asarray(sigma_g, float), jnp.asarray(sigma_h, float),
                        _shape_factor(shape))

    def factor(self, landscape, x):
        dx = x - landscape.minimum
        return _apply_shape(jnp.sqrt(self.sigma_g + self.sigma_h * ordered_dot(dx, dx)),
                            self.shape_chol)


# Constructors evaluate the landscape at its minimum in one compiled call per landscape type:
# evaluated eagerly, each operation would compile its own tiny XLA program on first use (about
# 0.25 s for the Kramers well's loss in a new process, more for a Hessian).
@jax.jit
def _basin(landscape):
    """(L(a), h_a): the loss and mean Hessian eigenvalue at the minimum a."""
    return landscape.loss(landscape.minimum), landscape.curvature_at_minimum()


def _one_landscape(name, landscape) -> None:
    """A ValueError for a stacked landscape (``sgdyn.stack``): its minimum has a member axis,
    and the reference values would mix the members (once read as a non-positive curvature)."""
    if np.ndim(landscape.minimum) > 1:
        raise ValueError(f"{name}.make takes one landscape, got a stack of "
                         f"{np.shape(landscape.minimum)[0]}: make one noise per member and "
                         f"stack them, sgdyn.stack([{name}.make(m, ...) for m in members])")


def _per_member(reference, landscape, stacked_axes: int):
    """``reference(landscape)``, for each member of a stack (``sgdyn.stack``) if the noise's
    leaves carry a stacking axis; None where the landscape is not stacked alike (unchecked)."""
    if not stacked_axes:
        return reference(landscape)
    try:
        return jax.vmap(reference)(landscape)
    except ValueError:  # a landscape without the stacking axis: nothing to compare member-wise
        return None


def _same_reference(name, what, made_with, given) -> None:
    if not all(_checks.is_concrete(v) for v in (*made_with, *given)):
        return  # under jit/vmap: the caller's business
    if not all(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-12)
               for a, b in zip(made_with, given)):
        raise ValueError(f"noise: this {name} was made for another landscape (the {what} at "
                         f"the minimum differs); make it with the SDE's landscape")


@jax.jit
def _hessian_at_minimum(landscape):
    """(eigenvalues, Cholesky factor) of H(a)."""
    h = landscape.hessian(landscape.minimum)
    return jnp.linalg.eigvalsh(h), jnp.linalg.cholesky(h)


@pytree_dataclass
class PLDLoss:
    """C = (sigma_g + (2 sigma_H / h_a) max(L(w) - L(a), 0)) M, h_a the curvature at a."""

    sigma_g: jax.Array
    sigma_h: jax.Array
    h_ref: jax.Array
    loss_ref: jax.Array
    shape_chol: jax.Array | None = None

    @staticmethod
    def make(landscape, sigma_g, sigma_h, shape=None) -> "PLDLoss":
        """h_a is the landscape's ``curvature_at_minimum()`` (mean Hessian eigenvalue in d-D)."""
        _checks.positive("sigma_g", _checks.scalar("sigma_g", sigma_g))
        _checks.nonnegative("sigma_h", _checks.scalar("sigma_h", sigma_h))
        _one_landscape("PLDLoss", landscape)
        loss_ref, h_ref = _basin(landscape)
        if not np.all(np.asarray(h_ref) > 0):
            raise ValueError(f"PLDLoss needs a positive curvature h_a at the landscape's minimum "
                             f"(it divides by it), got {np.asarray(h_ref).tolist()}")
        return PLDLoss(jnp.asarray(sigma_g, float), jnp.asarray(sigma_h, float),
                       jnp.asarray(h_ref, float), jnp.asarray(loss_ref, float),
                       _shape_factor(shape))

    def check_landscape(self, landscape) -> None:
        """ValueError unless L(a) and h_a are the ones this noise was made with."""
        reference = _per_member(_basin, landscape, np.ndim(self.h_ref))
        if reference is not None:
            _same_reference("PLDLoss", "loss or curvature", (self.loss_ref, self.h_ref),
                            reference)

    def factor(self, landscape, x):
        excess = jnp.maximum(landscape.loss(x) - self.loss_ref, 0.0)
        c = self.sigma_g + 2 * self.sigma_h / self.h_ref * excess
        return _apply_shape(jnp.sqrt(c), self.shape_chol)
