r"""Counter-based random streams: one independent stream per particle.

The noise that particle ``i`` sees at tick ``j`` is Threefry-2x32(key, (i, j * calls + c)) for the
tick's calls c = 0 .. calls - 1 (a 64-bit counter, see ``threefry_words``), a pure function of
the key, the particle's global index and the tick. So results are bit-identical however the
ensemble is chunked, sharded over devices, or packed, and no key is ever split per step.
Each Threefry call yields 64 bits; ``NoiseSpec`` says how a dynamic's step consumes them:

    "normal"       32 bits -> N(0, 1): a Threefry call's two words (a, b) give the pair
                            R cos(theta), R sin(theta), R = sqrt(-2 ln U(a)), theta = 2 pi U(b),
                            U a 23-bit uniform (Box-Muller; |z| < 5.77); every normal of a step
                            whose spec lets a normal share its call with another kind of value
                            (a bridge-corrected step's uniform) is the inverse CDF of U(its own
                            word) instead (|z| < 5.3)
    "uniform"      32 bits -> U(0, 1), 23-bit resolution, never 0 or 1
    "word"         32 bits, raw uint32 (e.g. minibatch indices as word mod n; bias < n / 2^32)
    "two_point"     1 bit  -> +-1 with probability 1/2 each (weak order-1 increments)
    "three_point"  16 bits -> +-a w.p. p = 10923/2^16 each, 0 otherwise, a = 1/sqrt(2p): mean 0,
                            variance 1 and odd moments 0 exactly, fourth moment a^2 = 2.99991
                            (the ideal +-sqrt(3) w.p. 1/6 needs p = 1/6, not a multiple of 2^-16)

Cheap increments pack many steps into one Threefry call: a 1-D two-point walk gets 64 steps per
call, a three-point one 4, a Gaussian one 2. Values never share bits (except the two normals of
a Box-Muller pair, which both read their call's two words): a part of width w starts at a
multiple of w, so a 32-bit part starts on a new word.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BITS = {"normal": 32, "uniform": 32, "word": 32, "two_point": 1, "three_point": 16}
_P3 = 10923  # three-point: P(+a) = P(-a) = _P3 / 2^16 (closest to 1/6)


class NoiseSpec(NamedTuple):
    """Random values one step consumes: ((kind, count), ...), all static."""

    parts: tuple

    def offsets(self) -> tuple[tuple[int, ...], int]:
        """(first bit of each part within a step, bits per step): each part aligned to its
        value width, the step to the widest one, so no value straddles or shares a word."""
        bit, offsets = 0, []
        for kind, count in self.parts:
            width = BITS[kind]
            bit = -(-bit // width) * width
            offsets.append(bit)
            bit += width * count
        widest = max((BITS[kind] for kind, _ in self.parts), default=1)
        return tuple(offsets), -(-bit // widest) * widest

    @property
    def bits(self) -> int:
        return self.offsets()[1]


def key_words(key) -> tuple[jax.Array, jax.Array]:
    """The two uint32 words of a JAX key (new-style typed or legacy uint32[2])."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    if np.shape(data) != (2,) or not (typed or dtype == np.uint32):
        # a batch of keys, an integer seed or another generator's key would otherwise be
        # read silently as some other key
        raise ValueError(f"key must be one threefry JAX key (jax.random.key(seed), or a legacy "
                         f"uint32[2] PRNGKey), got {dtype or type(key).__name__} of shape "
                         f"{np.shape(key)}")
    data = jnp.asarray(data, jnp.uint32)
    return data[0], data[1]


def threefry_words(key, particle_ids, tick, n_calls: int) -> jax.Array:
    """uint32 words of shape (2 * n_calls, N): Threefry of (particle id, counter), the counter
    of call c of tick ``tick`` being tick * n_calls + c; ``tick`` is one value or one per
    particle, below 2^31.

    The counter has 64 bits: its low word is Threefry's second input, and its high word, which
    is 0 until a run has drawn 2^32 calls per particle (only possible with more than 4 calls a
    tick, e.g. Gaussian increments in 9 or more dimensions), is XORed into the key's second
    word, so a long run never meets its own noise again and a shorter one is unchanged.

    Word-major layout: each word is one contiguous row over the particles, which keeps the
    per-step slices contiguous and the step's arithmetic vectorised.
    """
    k0, k1 = key_words(key)
    n = particle_ids.shape[0]
    hi = jnp.broadcast_to(particle_ids.astype(jnp.uint32)[None, :], (n_calls, n))
    tick = jnp.broadcast_to(jnp.asarray(tick, jnp.uint32), (n,))[None, :]  # one per particle
    calls = jnp.arange(n_calls, dtype=jnp.uint32)[:, None]
    if n_calls <= 4:  # tick < 2^30 (MAX_STEPS) times at most 4 calls stays below 2^32
        a, b = threefry2x32(k0, k1, hi, tick * np.uint32(n_calls) + calls)
    else:
        low, high = _counter64(tick, n_calls, calls)
        a, b = threefry2x32(k0, k1 ^ high, hi, low)
    return jnp.concatenate([a, b], axis=0)


def _counter64(tick, n_calls: int, c):
    """(low, high) uint32 words of tick * n_calls + c, exact for tick < 2^31, n_calls < 2^16
    and c < n_calls: the product in 16-bit limbs, then the carries."""
    if n_calls >= 2**16:
        raise ValueError(f"a step may draw at most 2^22 random bits (2^16 Threefry calls), "
                         f"got {n_calls} calls")
    lo16, hi16 = tick & np.uint32(0xFFFF), tick >> np.uint32(16)
    p0 = lo16 * np.uint32(n_calls)  # < 2^32
    p1 = hi16 * np.uint32(n_calls)  # < 2^31: tick * n_calls = p1 * 2^16 + p0
    low = (p1 << np.uint32(16)) + p0
    high = (p1 >> np.uint32(16)) + (low < p0).astype(jnp.uint32)
    total = low + c
    return total, high + (total < low).astype(jnp.uint32)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), bit-identical to JAX's
    ``threefry2x32_p``, written out in jnp. JAX lowers its primitive on a CPU as a rolled
    loop (one pass over memory per 4 rounds); unrolled here, XLA fuses all 20 rounds with
    the decoding and the step that use them."""
    def rotl(v, d):
        return (v << np.uint32(d)) | (v >> np.uint32(32 - d))

    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def plan(spec: NoiseSpec) -> tuple[int, int]:
    """(steps per tick, Threefry calls per tick) for a step that consumes ``spec``."""
    bits = spec.bits
    if bits == 0:
        return 1, 0
    if bits >= 64:
        return 1, math.ceil(bits / 64)
    return 64 // bits, 1


def _uniform(words):
    # 23 bits so that k + 1/2 is exact in float32 and u stays strictly inside (0, 1)
    return ((words >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def _decode(kind, words):
    dtype = jnp.zeros(()).dtype  # float64 when x64 is enabled
    if kind == "normal":  # inverse CDF, for a normal whose partner word is taken (_paired)
        u = _uniform(words).astype(dtype)
        return jnp.sqrt(2.0).astype(dtype) * jax.lax.erf_inv(2 * u - 1)
    if kind == "uniform":
        return _uniform(words).astype(dtype)
    if kind == "three_point":  # words are 16-bit fields here
        a = math.sqrt(2**16 / (2 * _P3))
        return jnp.where(words < _P3, -a, jnp.where(words >= 2**16 - _P3, a, 0.0)).astype(dtype)
    if kind == "two_point":  # 1-bit fields
        return words.astype(dtype) * 2 - 1
    raise ValueError(kind)


def _fields(words, bit, width: int, count: int):
    """``count`` consecutive ``width``-bit fields from bit ``bit`` on, as uint32 (count, N)."""
    mask = jnp.uint32((1 << width) - 1)
    if count == 1:  # one field: a slice and a shift, no gather
        w = jax.lax.dynamic_slice_in_dim(words, bit // 32, 1, axis=0)
        return (w >> jnp.asarray(bit % 32, jnp.uint32)) & mask
    if isinstance(bit, int) and count % 2 and count < 32:  # an unrolled step: places known
        # rows and shifts, stacked: XLA's gather of an odd number of rows ran 2-4x slower
        # coordinate-major (three-point samples in 7-31 dimensions); the gather ran as fast
        # for even counts and faster for long ones (101-D three-point samples 1.17x)
        return jnp.stack([words[p // 32] >> np.uint32(p % 32)
                          for p in range(bit, bit + width * count, width)]) & mask
    pos = bit + width * jnp.arange(count)
    w = jnp.take(words, pos // 32, axis=0)
    return (w >> (pos % 32).astype(jnp.uint32)[:, None]) & mask


# sin(x) / x and cos(x) on [0, pi/2] as polynomials in x^2, fitted minimax here (errors 3e-9
# and 2e-10, below float32's resolution; under x64 they bound the accuracy, far below the
# angle's 23-bit grid of 7.5e-7): XLA's CPU sin and cos are scalar library calls, a quarter of
# the speed of the inverse CDF they would replace
_SIN = (0.9999999765900124, -0.1666664763468945, 0.008332899823906784,
        -0.00019800897786241556, 2.5904885333771777e-06)
_COS = (0.9999999997809075, -0.49999999358681324, 0.041666636262814756,
        -0.001388836144414582, 2.476016312782936e-05, -2.6051521345715756e-07)


def _horner(coefficients, x):
    acc = jnp.asarray(coefficients[-1], x.dtype)
    for c in coefficients[-2::-1]:
        acc = acc * x + c
    return acc


def box_muller(a, b, sine: bool):
    """R cos(theta) (``sine``: R sin(theta)) for R = sqrt(-2 ln U(a)), theta = 2 pi U(b), U the
    23-bit uniform of a word (never 0 or 1, so R < 5.77). The two are independent N(0, 1):
    one Threefry call's words (a, b) give a pair. theta's quadrant is b's top two bits, its
    place within the quadrant the next 21."""
    dtype = jnp.zeros(()).dtype
    r = jnp.sqrt(-2 * jnp.log(_uniform(a).astype(dtype)))
    x = (((b >> 9) & np.uint32(0x1FFFFF)).astype(dtype) + 0.5) * (math.pi / 2 / 2**21)
    x2 = x * x
    s, c = x * _horner(_SIN, x2), _horner(_COS, x2)
    q = (b >> 30) + np.uint32(3 if sine else 0)  # sin(t) = cos(t - pi / 2)
    # cos(q pi / 2 + x) = c, -s, -c, s for q = 0, 1, 2, 3 (mod 4)
    magnitude = jnp.where(q & 1, s, c)
    return r * jnp.where((q + 1) & 2, -magnitude, magnitude)


def _paired(spec: NoiseSpec) -> bool:
    """Whether the normals of ``spec`` come in Box-Muller pairs: yes unless some normal's
    partner word (the other word of its Threefry call) feeds another kind of value, as a
    bridge-corrected step's uniform does, which would then be a function of that normal's
    angle (or radius) word. One answer for the whole spec."""
    steps, calls = plan(spec)
    offsets, step_bits = spec.offsets()
    kinds = [set() for _ in range(2 * calls)]
    for s in range(steps):
        for (kind, count), offset in zip(spec.parts, offsets):
            lo = s * step_bits + offset
            for row in range(lo // 32, -(-(lo + BITS[kind] * count) // 32)):
                kinds[row].add(kind)
    return all(kinds[(row + calls) % (2 * calls)] <= {"normal"}
               for row, used in enumerate(kinds) if "normal" in used)


def _normals(words, row, count: int, calls: int):
    """Box-Muller normals of rows ``row`` .. ``row`` + count - 1 of a tick's words (2 calls
    rows: the calls' first words, then their second words): row r < calls is the cosine of
    call r, row calls + r its sine."""
    if isinstance(row, int):  # an unrolled step knows its rows: slices, no gather
        parts = []
        for lo, hi in ((row, min(row + count, calls)), (max(row, calls), row + count)):
            if lo < hi:
                c = lo % calls
                parts.append(box_muller(words[c:c + hi - lo], words[calls + c:calls + c + hi - lo],
                                        sine=lo >= calls))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    rows = row + jnp.arange(count)
    a, b = jnp.take(words, rows % calls, axis=0), jnp.take(words, rows % calls + calls, axis=0)
    return jnp.where((rows >= calls)[:, None], box_muller(a, b, True), box_muller(a, b, False))


def take(words: jax.Array, substep, spec: NoiseSpec):
    """The values of step ``substep`` within a tick, one (count, N) array per part of ``spec``
    (value-major, like the words: the engine vmaps a step over their second axis).

    ``words`` has shape (W, N), the output of ``threefry_words`` for one tick; ``substep``
    may be a traced integer (ticks with many steps run them in a loop, not unrolled).
    """
    out = []
    offsets, step_bits = spec.offsets()
    for (kind, count), offset in zip(spec.parts, offsets):
        bit = substep * step_bits + offset
        if BITS[kind] < 32:
            out.append(_decode(kind, _fields(words, bit, BITS[kind], count)))
        elif kind == "normal" and _paired(spec):
            out.append(_normals(words, bit // 32, count, words.shape[0] // 2))
        else:
            w = jax.lax.dynamic_slice_in_dim(words, bit // 32, count, axis=0)
            out.append(w if kind == "word" else _decode(kind, w))
    return tuple(out)
