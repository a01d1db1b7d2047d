r"""Sums over a particle's coordinates in one fixed order, whatever the batch around them.

The engine promises bit-identical per-particle results however an ensemble is chunked, packed
or sharded. Elementwise arithmetic keeps that promise; a reduction (``jnp.sum``, ``@``,
``jnp.linalg.norm``) over a particle's coordinates does not: XLA picks the reduction's kernel,
and with it the order of the additions, from the shape of the whole batch. On a CPU
``sum(x**2)`` of a 10-D particle rounded differently in its last bit with 16384 particles than
with 64, and the trajectories then drift apart. The sums here are written as elementwise adds
of slices (pairwise: the first half plus the second, until one value is left), which no
compiler reorders, so every particle is summed in the same order in every program.

Dynamics, landscapes and regions call these for every sum over coordinates or examples that a
step evaluates; a user's own landscape should too, where it wants the promise kept.
"""

from __future__ import annotations

import jax.numpy as jnp


def ordered_sum(v, axis: int = -1, xp=jnp):
    """sum_k v[..., k] over ``axis``, pairwise in a fixed order (round-off O(log n) ulp)."""
    v = xp.moveaxis(xp.asarray(v), axis, -1)
    if v.shape[-1] == 0:
        return xp.zeros(v.shape[:-1], v.dtype)
    while v.shape[-1] > 1:
        n = v.shape[-1]
        half = v[..., :n // 2] + v[..., n // 2:2 * (n // 2)]
        v = xp.concatenate([half, v[..., n - 1:]], axis=-1) if n % 2 else half
    return v[..., 0]


def ordered_dot(a, b, xp=jnp):
    """a . b over the last axis (vectors, or a matrix times a vector: m @ v)."""
    return ordered_sum(a * b, xp=xp)


def ordered_norm(v, xp=jnp):
    """|v|, the Euclidean norm over the last axis."""
    return xp.sqrt(ordered_sum(v * v, xp=xp))
