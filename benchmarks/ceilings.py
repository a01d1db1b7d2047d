"""Hardware ceilings on this machine, all inside ``lax.scan`` like a simulation's time loop:

- Gaussian random numbers per second (``jax.random.normal``, a fresh key split per step);
- random bits per second (``jax.random.bits``, uint32 words);
- the same two for the counter-based generator sgdyn draws from (``sgdyn.rng``: Threefry of
  (particle, counter), unrolled so XLA fuses it; faster on a CPU than ``jax.random``, whose
  Threefry runs as a rolled loop there);
- particle-steps per second of one step's arithmetic alone (the dynamic's ``step`` with a
  deterministic +-1 increment instead of noise: no random numbers at all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgdyn import rng

from .alternatives import REPEATS, timed


def gaussians_per_second(n=100_000, steps=200, repeats=REPEATS):
    @jax.jit
    def run(key):
        def body(acc, k):
            return acc + jax.random.normal(k, (n,)), None

        return jax.lax.scan(body, jnp.zeros(n), jax.random.split(key, steps))[0]

    _, t = timed(run, jax.random.key(0), repeats=repeats)
    return n * steps / t


def bits_per_second(n=100_000, steps=400, repeats=REPEATS):
    @jax.jit
    def run(key):
        def body(acc, k):
            return acc ^ jax.random.bits(k, (n,), jnp.uint32), None

        return jax.lax.scan(body, jnp.zeros(n, jnp.uint32), jax.random.split(key, steps))[0]

    _, t = timed(run, jax.random.key(0), repeats=repeats)
    return 32 * n * steps / t


def counter_gaussians_per_second(n=100_000, steps=200, repeats=REPEATS):
    """Gaussians/s from sgdyn.rng: one Threefry call per particle gives two normals."""
    spec = rng.NoiseSpec((("normal", 1),))
    ids = jnp.arange(n, dtype=jnp.uint32)

    @jax.jit
    def run(key):
        def body(acc, c):
            words = rng.threefry_words(key, ids, c, 1)
            return acc + rng.take(words, 0, spec)[0][:, 0] + rng.take(words, 1, spec)[0][:, 0], None

        return jax.lax.scan(body, jnp.zeros(n), jnp.arange(steps // 2, dtype=jnp.uint32))[0]

    _, t = timed(run, jax.random.key(0), repeats=repeats)
    return n * 2 * (steps // 2) / t


def counter_bits_per_second(n=100_000, steps=400, repeats=REPEATS):
    ids = jnp.arange(n, dtype=jnp.uint32)

    @jax.jit
    def run(key):
        def body(acc, c):
            words = rng.threefry_words(key, ids, c, 1)
            return acc ^ words[0] ^ words[1], None

        return jax.lax.scan(body, jnp.zeros(n, jnp.uint32), jnp.arange(steps // 2, dtype=jnp.uint32))[0]

    _, t = timed(run, jax.random.key(0), repeats=repeats)
    return 64 * n * (steps // 2) / t


def arithmetic_steps_per_second(dynamic, n=100_000, steps=2000, repeats=REPEATS):
    """Particle-steps/s of ``dynamic.step`` alone (increments +-1 alternating by step)."""
    d = dynamic.dim

    @jax.jit
    def run(dyn, x):
        def body(x, i):
            xi = jnp.where(i % 2 == 0, 1.0, -1.0) * jnp.ones(d, x.dtype)
            return jax.vmap(lambda xx: dyn.step(xx, (xi,)))(x), None

        return jax.lax.scan(body, x, jnp.arange(steps))[0]

    _, t = timed(run, dynamic, jnp.zeros((n, d)), repeats=repeats)
    return n * steps / t


def matmul_flops_per_second(size=1024, repeats=REPEATS):
    """float32 FLOP/s of one size x size matrix product: what dense layers can reach at best."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    _, t = timed(jax.jit(lambda a: a @ a), a, repeats=repeats)
    return 2 * size**3 / t
