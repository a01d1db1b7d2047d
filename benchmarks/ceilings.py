"""Hardware ceilings on this machine, all inside ``lax.scan`` like a simulation's time loop:

- Gaussian random numbers per second (``jax.random.normal``, a fresh key split per step);
- random bits per second (``jax.random.bits``, uint32 words);
- the same two for the counter-based generator sgdyn draws from (``sgdyn.rng``: Threefry of
  (particle, counter), unrolled so XLA fuses it; faster on a CPU than ``jax.random``, whose
  Threefry runs as a rolled loop there);
- particle-steps per second of one step's arithmetic alone (the dynamic's ``step`` with a
  deterministic +-1 increment instead of noise: no random numbers at all);
- float32 FLOP/s of one large matrix product, and of a dense layer's small products alone
  and stacked for several seeds;
- for training, the barest vmapped SGD step (gradient and update, nothing else): a floor
  under any vmapped training step, hence a ceiling on what vmap can gain over a loop; and the
  per-epoch evaluation, which vmap and a loop both run.
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
            return acc + rng.take(words, 0, spec)[0][0] + rng.take(words, 1, spec)[0][0], None

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


def dense_products_flops_per_second(stack, rows, fan_in, fan_out, steps=500, repeats=REPEATS):
    """float32 FLOP/s of a dense layer's forward and weight-gradient products,
    h = x W and dW = x^T h, for ``stack`` independent layers at once ([stack, rows, fan_in]
    by [stack, fan_in, fan_out], what vmap over seeds makes of them), inside ``lax.scan``.
    With stack = 1 it is one seed's layer: the ratio says whether batching gains per FLOP."""
    x = jnp.ones((stack, rows, fan_in), jnp.float32)
    w = jnp.full((stack, fan_in, fan_out), 1e-3, jnp.float32)

    @jax.jit
    def run(x, w):
        def body(w, _):
            h = jnp.einsum("sbk,skh->sbh", x, w)
            return w + 1e-6 * jnp.einsum("sbk,sbh->skh", x, h), None

        return jax.lax.scan(body, w, None, length=steps)[0]

    _, t = timed(run, x, w, repeats=repeats)
    return 4 * stack * rows * fan_in * fan_out * steps / t


def bare_sgd_epoch(model, x, y, batch_size, seeds, steps, lr=0.05):
    """(jitted run, initial weights) of ``steps`` of the barest SGD step,
    w <- w - lr grad L_batch(w), for ``seeds`` seeds under ``jax.vmap``, each seed on its own
    minibatches: no optimizer state, no shuffling, no divergence guard, no evaluation."""
    from sgdyn.train import models
    from sgdyn.train.loop import init_params

    params = init_params(model, list(range(seeds)), x)
    idx = (jnp.arange(seeds * steps * batch_size) % x.shape[0]).reshape(steps, seeds, batch_size)
    grad = jax.vmap(jax.grad(lambda p, xb, yb: models.mean_loss(model, p, xb, yb)))

    @jax.jit
    def run(params):
        def body(p, i):
            return jax.tree.map(lambda w, g: w - lr * g, p, grad(p, x[i], y[i])), None

        return jax.lax.scan(body, params, idx)[0]

    return run, params


def evaluation_seconds(model, params, data, repeats=REPEATS):
    """Seconds of the evaluation ``sgdyn.train.train`` runs after every epoch: loss and accuracy
    of each seed in ``params`` (stacked) on the whole training and test sets, its own program."""
    from sgdyn.train.loop import _evaluators

    metrics, _ = _evaluators(model, 0)
    sets = [(jnp.asarray(data.x_train), jnp.asarray(data.y_train)),
            (jnp.asarray(data.x_test), jnp.asarray(data.y_test))]
    params = jax.tree.map(jnp.asarray, params)
    _, t = timed(lambda p: [metrics(p, x, y) for x, y in sets], params, repeats=repeats)
    return t


def vmapped_sgd_step_seconds(model, x, y, batch_size, seeds, steps, repeats=REPEATS):
    """Seconds per seed-step of ``bare_sgd_epoch``. No training step of that many seeds can
    be cheaper, so (one seed's whole step in a loop) / this bounds what vmap can gain."""
    run, params = bare_sgd_epoch(model, x, y, batch_size, seeds, steps)
    _, t = timed(run, params, repeats=repeats)
    return t / (seeds * steps)
