r"""The SGD-like SDE (THEORY.md section 1), time t = k * lr:

    dw = -grad L(w) dt + sqrt(lr / b * C(w)) dB_t

``SDE`` pairs a landscape (the drift) with a noise model (C) and the learning rate and batch
size that set the noise level; a solver in ``sgdyn.solvers`` integrates it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks
from ._pytree import pytree_dataclass
from .ordered import ordered_matvec, ordered_norm


@pytree_dataclass
class SDE:
    """dw = -grad L(w) dt + sqrt(lr / b * C(w)) dB: a landscape (L), a noise model (C), the
    learning rate lr and the batch size b (time t = k * lr). Build it with ``SDE.make``; a
    solver (``EulerMaruyama``) turns it into a dynamic."""

    landscape: object
    noise: object
    lr: jax.Array
    batch_size: jax.Array

    @staticmethod
    def make(landscape, noise, lr, batch_size) -> "SDE":
        """The SDE of ``noise`` (``Isotropic``, ``HessianNoise``, ``PLDLocal``, ``PLDLoss``) on
        ``landscape``, with one learning rate ``lr`` > 0 and one batch size ``batch_size`` > 0
        (a noise made for another landscape, or a shape matrix of another size, is refused)."""
        # one number each: a vector broadcast against one landscape failed deep in a step
        # (a sweep stacks whole SDEs: sgdyn.stack)
        _checks.positive("lr", _checks.scalar("lr", lr))
        _checks.positive("batch_size", _checks.scalar("batch_size", batch_size))
        if hasattr(noise, "check_landscape"):  # noise models that read the minimum at make()
            noise.check_landscape(landscape)
        chol = getattr(noise, "shape_chol", None)  # (..., d, d), a leading axis when stacked
        if chol is not None and tuple(chol.shape[-2:]) != (landscape.dim,) * 2:
            # else a JAX shape error deep in the first step, naming neither
            raise ValueError(f"the noise's shape matrix must be {landscape.dim} x "
                             f"{landscape.dim}, the landscape's dimension, got "
                             f"{tuple(chol.shape[-2:])}")
        return SDE(landscape, noise, jnp.asarray(lr, float), jnp.asarray(batch_size, float))

    @property
    def dim(self) -> int:
        return self.landscape.dim

    def drift(self, x):
        return -self.landscape.grad(x)

    def diffusion(self, x):
        """G(w) with G G' = lr C(w) / b: scalar, diagonal vector or (d, d) matrix."""
        return jnp.sqrt(self.lr / self.batch_size) * self.noise.factor(self.landscape, x)

    def apply_diffusion(self, x, dw):
        g = self.diffusion(x)
        return ordered_matvec(g, dw) if jnp.ndim(g) == 2 else g * dw

    def std_along(self, x, normal):
        """sqrt(n' G G' n): noise level per sqrt(time) along the unit vector ``normal``."""
        g = self.diffusion(x)
        if jnp.ndim(g) == 2:
            return ordered_norm(ordered_matvec(g.T, normal))
        if jnp.ndim(g) == 0:  # |G| |n|: the normal unread (XLA drops it), which vmap would
            return jnp.abs(g)  # compute transposed in a coordinate-major exit test
        return ordered_norm(g * normal)
