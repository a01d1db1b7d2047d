"""An epoch's minibatch order: ``jax.random.permutation``, bit for bit, from cheaper sorts.

``jax.random.permutation(key, n)`` sorts the indices by fresh random 32-bit words, in
ceil(3 ln n / ln(2^32 - 1)) stable rounds (two for 4,000 examples), each a sort of a
(word, index) pair of arrays. XLA's CPU sort compares such pairs through a generic comparator,
and sorts one array of unsigned words much faster. A stable sort by a 32-bit word is a stable
sort by its low 16 bits followed by a stable sort by its high 16 bits, and for n <= 2^16 a
stable sort by 16 bits is one sort of the words (bits << 16 | position): the position breaks
ties and is read back from the low half. :func:`permutation` draws the same words and returns
the same permutation, 3-5x faster on a 2-core CPU (about 10% of a batch-32 MNIST-1D epoch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_PACKED = 1 << 16  # positions must fit in the low 16 bits of a word


def rounds(n: int) -> int:
    """Sort rounds ``jax.random.permutation`` uses for n items (its collision heuristic)."""
    return int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))


def stable_argsort(words: jax.Array) -> jax.Array:
    """Indices that sort 1-D uint32 ``words`` stably (equal words keep their order), as
    uint32; two single-array sorts. Needs ``words.size <= 2**16``."""
    pos = jnp.arange(words.shape[0], dtype=jnp.uint32)
    by_low = jnp.sort((words << 16) | pos) & 0xFFFF
    return by_low[jnp.sort((words[by_low] >> 16 << 16) | pos) & 0xFFFF]


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``arange(n)``, equal to
    ``jax.random.permutation(key, n)`` (which it calls for n > 2^16)."""
    if n > MAX_PACKED:
        return jax.random.permutation(key, n)
    x = jnp.arange(n)
    for _ in range(rounds(n)):
        key, sub = jax.random.split(key)
        x = x[stable_argsort(jax.random.bits(sub, (n,), jnp.uint32))]
    return x
