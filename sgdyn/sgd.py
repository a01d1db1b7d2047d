r"""Real minibatch SGD on a finite-sum problem, as a dynamic (see ``sgdyn.solvers``):

    w_{k+1} = w_k - lr * (1/b) sum_{i in B_k} grad l_i(w_k),     t = k * lr

Each step draws a fresh batch B_k of b examples, uniformly with replacement, or (``replace=False``)
a uniformly random b-subset (Floyd's algorithm). Batches are independent across steps, so the
gradient noise has covariance C(w)/b, times (n - b)/(n - 1) without replacement (THEORY.md
section 1). No Gaussian assumption anywhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from . import _checks
from ._pytree import pytree_dataclass, static_field
from .rng import NoiseSpec


def floyd_subset(words, n: int):
    """A uniformly random b-subset of range(n) from b uint32 words (b = len(words) <= n)."""
    b = words.shape[0]
    chosen = []
    for k, j in enumerate(range(n - b, n)):
        t = (words[k] % jnp.uint32(j + 1)).astype(jnp.int32)
        if chosen:
            taken = jnp.any(jnp.stack(chosen) == t)
            t = jnp.where(taken, j, t)
        chosen.append(t)
    return jnp.stack(chosen)


def noise_batch_size(batch_size: int, n: int, replace: bool = True) -> float:
    """b' with Cov[g_B] = C(w) / b': b with replacement, b (n - 1) / (n - b) without (THEORY.md
    section 1). The batch size to give the SGD's continuous-time model and ``sgdyn.theory``;
    inf when b = n without replacement (full-batch gradient descent: no noise at all)."""
    if replace:
        return float(batch_size)
    return math.inf if batch_size >= n else batch_size * (n - 1) / (n - batch_size)


@pytree_dataclass
class MinibatchSGD:
    """Real minibatch SGD on a finite-sum ``problem`` (module docstring): one step of lr
    time per update, a fresh batch of ``batch_size`` examples each, drawn with or without
    replacement. Build it with ``MinibatchSGD.make``."""

    problem: object
    lr: jax.Array
    batch_size: int = static_field(default=1)
    replace: bool = static_field(default=True)

    @staticmethod
    def make(problem, lr, batch_size: int, replace: bool = True) -> "MinibatchSGD":
        """SGD on ``problem`` (``LeastSquares``, ``SyntheticPLD``: n examples with per-example
        gradients) at learning rate ``lr`` > 0 with batches of 1 <= ``batch_size`` <= n."""
        if not hasattr(problem, "batch_grad") or not hasattr(problem, "n"):
            raise TypeError(f"problem must be a finite-sum problem (LeastSquares, SyntheticPLD: "
                            f"n examples with per-example gradients), got "
                            f"{type(problem).__name__}; for a landscape use an SDE")
        _checks.positive("lr", lr)
        batch_size = _checks.positive_int("batch_size", batch_size)
        if batch_size > problem.n:
            raise ValueError(f"batch_size must be <= the number of examples n={problem.n}, "
                             f"got {batch_size}")
        return MinibatchSGD(problem, jnp.asarray(lr, float), batch_size, bool(replace))

    @property
    def dim(self) -> int:
        return self.problem.dim

    @property
    def dt(self):
        return self.lr

    @property
    def noise_batch_size(self) -> float:
        """b' with gradient-noise covariance C(w) / b' (see :func:`noise_batch_size`)."""
        return noise_batch_size(self.batch_size, self.problem.n, self.replace)

    @property
    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec((("word", self.batch_size),))

    def batch(self, words):
        n = self.problem.n
        if self.replace:
            return (words % jnp.uint32(n)).astype(jnp.int32)
        return floyd_subset(words, n)

    def step(self, x, noise):
        (words,) = noise
        return x - self.lr * self.problem.batch_grad(x, self.batch(words))
