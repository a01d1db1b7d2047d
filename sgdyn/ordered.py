r"""Sums over a particle's coordinates in one fixed order, whatever the batch around them.

The engine promises bit-identical per-particle results however an ensemble is chunked, packed
or sharded. Elementwise arithmetic keeps that promise; a reduction (``jnp.sum``, ``@``,
``jnp.linalg.norm``) over a particle's coordinates does not: XLA picks the reduction's kernel,
and with it the order of the additions, from the shape of the whole batch. On a CPU
``sum(x**2)`` of a 10-D particle rounded differently in its last bit with 16384 particles than
with 64, and the trajectories then drift apart. The sums here are written as elementwise adds
of slices (pairwise: the first half plus the second, until one value is left; a fixed matrix
times a vector term by term), which no compiler reorders, so every particle is summed in the
same order in every program.

Dynamics, landscapes and regions call these for every sum over coordinates or examples that a
step evaluates; a user's own landscape should too, where it wants the promise kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pairwise(v, op, axis: int = -1, xp=jnp):
    """v folded over ``axis`` (non-empty) with the binary elementwise ``op``: the first half
    with the second until one entry is left, then the last entries that odd lengths left
    over, in the order they were set aside.

    Only slices and ``op``, and one-entry slices once ENTRYWISE or fewer entries are left: a
    concatenate (or a moveaxis) would make vmap move the batch axis to the front, a
    transposed copy of the whole batch in the engine's coordinate-major steps; and a value
    that two later folds both read (a product of whole arrays, or a half of the array) is one
    XLA's CPU fusion writes out rather than computes in each reader (the norm of a 16-31-D
    coordinate-major state ran 2.5x slower so, and an exit test that folds a new state redid
    the step for every pass). Sums of products (``ordered_dot``, ``ordered_norm``) multiply
    the slices as they go (compiled, XLA may fuse a product with the addition after it into
    one multiply-add: the order of the additions is fixed, their roundings per program).
    """
    v = xp.asarray(v)
    return _fold(lambda x: x, (v,), op, _axis(v, axis))


def _axis(v, axis: int) -> int:
    """``axis`` of v counted from the end (negative); ValueError for a 0-d v."""
    if v.ndim == 0:
        raise ValueError("v must have at least one axis to sum over, got a 0-d value")
    return axis % v.ndim - v.ndim


ENTRYWISE = 32  # folds of at most this many entries go entry by entry (see _fold)


def _fold(leaf, parts, op, axis: int):
    """pairwise's fold of leaf(*parts): the parts (arrays that broadcast together) are sliced
    along ``axis`` (negative: counted from the end, where their lengths agree).

    Halves of arrays while more than ENTRYWISE entries are left, then one entry at a time:
    the same additions in the same order either way. Entry by entry every value is read by one
    fold, which XLA fuses into one pass (see pairwise); but the program grows with the entries
    (a 1000-D exit run's first call took 21.5 s so, against 1.1 s with halves)."""
    after = (slice(None),) * (-axis - 1)

    def cut(x, start, stop):
        return x[(Ellipsis, slice(start, stop)) + after]

    def take(start, stop):  # entries start .. stop - 1 of the values folded so far
        return leaf(*(cut(p, start, stop) for p in parts))

    n, leftovers = parts[0].shape[axis], []
    while n > ENTRYWISE:
        if n % 2:
            leftovers.append(take(n - 1, n))
        half = op(take(0, n // 2), take(n // 2, 2 * (n // 2)))
        take, n = (lambda start, stop, half=half: cut(half, start, stop)), n // 2
    v = [take(i, i + 1) for i in range(n)]
    while len(v) > 1:
        if len(v) % 2:
            leftovers.append(v.pop())
        half = len(v) // 2
        v = [op(v[j], v[j + half]) for j in range(half)]
    for last in leftovers:
        v[0] = op(v[0], last)
    return v[0][(Ellipsis, 0) + after]


def ordered_sum(v, axis: int = -1, xp=jnp):
    """sum_k v[..., k] over ``axis``, pairwise in a fixed order (round-off O(log n) ulp).
    Booleans and small integers are summed in the integer type ``jnp.sum`` would use."""
    v = xp.asarray(v)
    return _sum(lambda x: x, (v,), v.dtype, _axis(v, axis), xp)


def _sum(leaf, parts, dtype, axis: int, xp):
    """sum_k leaf(*parts)[..., k, ...] over ``axis`` (negative), in the type ``jnp.sum`` would
    give a ``dtype`` value; the leaves taken slice by slice (see ``pairwise``)."""
    wide = np.sum(np.zeros(0, dtype)).dtype  # numpy's promotion: bool, int8 -> int64
    wide = wide if xp is np else jax.dtypes.canonicalize_dtype(wide)
    if parts[0].shape[axis] == 0:  # an empty sum is 0 in any order
        return xp.sum(leaf(*parts).astype(wide), axis=axis)
    return _fold(lambda *x: leaf(*x).astype(wide), parts, lambda a, b: a + b, axis)


def _same_length(a, b, name: str) -> None:
    if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name}: the last axes must have one length, got shapes "
                         f"{a.shape} and {b.shape}")


def ordered_dot(a, b, xp=jnp):
    """a . b over the last axis, pairwise (for a stack of rows a, one dot per row)."""
    a, b = xp.asarray(a), xp.asarray(b)
    _same_length(a, b, "ordered_dot")
    return _sum(lambda x, y: x * y, (a, b), xp.result_type(a, b), -1, xp)


def ordered_matvec(m, v, xp=jnp):
    """m @ v, summed term by term: m[:, 0] v[0] + m[:, 1] v[1] + ...

    A chain of elementwise multiply-adds, which XLA fuses into one pass: the thing for a fixed
    matrix (a noise's shape factor, scaled per particle or not), where the pairwise sum of the
    products would first hold all d x d of them for every particle (30x slower for a 32-D
    Hessian noise). A matrix gathered per particle (a minibatch's examples) is better served by
    ``ordered_dot``, one pairwise dot per row."""
    m, v = xp.asarray(m), xp.asarray(v)
    _same_length(m, v, "ordered_matvec")
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"ordered_matvec: v must be a non-empty vector, got shape {v.shape}")
    acc = m[..., 0] * v[0]
    for k in range(1, v.shape[0]):
        acc = acc + m[..., k] * v[k]
    return acc


def ordered_norm(v, xp=jnp):
    """|v|, the Euclidean norm over the last axis."""
    v = xp.asarray(v)
    return xp.sqrt(_sum(lambda x: x * x, (v,), v.dtype, _axis(v, -1), xp))
