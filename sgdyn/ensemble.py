r"""The ensemble engine: many independent particles of one dynamic, stepped in lockstep.

Two pure, jittable kernels (no hidden jit or vmap over parameters; vmap them over a stacked
dynamic for a sweep):

- ``simulate_exits``: steps until every particle has left the region or t_max is reached,
  recording each particle's first exit time on the fly (no trajectories are stored). The loop
  is a ``lax.while_loop`` (to stop early) over blocks of a fixed-length ``lax.scan``.
- ``simulate_samples``: runs a burn-in and records the ensemble every ``thin`` steps.

The noise of particle i is drawn from its own counter-based stream (``sgdyn.rng``), indexed by
``first_particle + i``; running particles in chunks, on several devices, or all at once gives
bit-identical per-particle results. Times are in t = k * lr units (k steps of size dt).

Particles whose state becomes NaN/inf or leaves the box |x_j| < divergence_bound are *diverged*:
frozen, counted apart, neither escaped nor censored.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .regions import exited
from .rng import NoiseSpec

RUNNING, ESCAPED, DIVERGED = 0, 1, 2


class ExitRecord(NamedTuple):
    """Per-particle outcome: ``time`` is the exit time if escaped, else the censoring time."""

    time: jax.Array  # (N,)  t = k * lr units
    escaped: jax.Array  # (N,) bool
    diverged: jax.Array  # (N,) bool
    censored: jax.Array  # (N,) bool, still inside at t_max
    t_max: jax.Array  # the censoring time actually used: ceil(t_max / dt) * dt


class _Walk(NamedTuple):
    x: jax.Array
    status: jax.Array
    exit_step: jax.Array
    tick: jax.Array


def _spec_with_uniform(spec: NoiseSpec, extra_uniform: bool) -> NoiseSpec:
    return NoiseSpec(spec.parts + ((("uniform", 1),) if extra_uniform else ()))


def exit_spec(dynamic, correction) -> NoiseSpec:
    """What one step of an exit run consumes: the dynamic's noise, plus a uniform for the
    Brownian-bridge test."""
    return _spec_with_uniform(dynamic.noise_spec, correction == "bridge")


def _diverged(x, bound):
    # one comparison per coordinate: NaN <= bound is False, so NaN and inf count as diverged
    return ~jnp.all(jnp.abs(x) <= bound, axis=-1)


def _tick(key, dynamic, ids, walk: _Walk, spec: NoiseSpec, visit):
    """Advance every particle through one tick (the steps one Threefry call per particle feeds).

    ``visit(walk, x_old, x_new, extra, step_index) -> walk`` folds one step into the state.
    """
    steps, calls = rng.plan(spec)
    words = rng.threefry_words(key, ids, walk.tick * calls, calls)
    step = jax.vmap(dynamic.step)
    n_dyn = len(dynamic.noise_spec.parts)

    def substep(s, w):
        noise = rng.take(words, s, spec)
        x_new = step(w.x, noise[:n_dyn])
        return visit(w, w.x, x_new, noise[n_dyn:], walk.tick * steps + s)

    if steps <= 2:  # Gaussian increments: unroll the (at most two) steps
        for s in range(steps):
            walk = substep(s, walk)
    else:  # bit-packed increments: up to 64 steps per tick, in a loop to keep compiles small
        walk = jax.lax.fori_loop(0, steps, substep, walk)
    return walk._replace(tick=walk.tick + 1)


def init_walk(dynamic, x0, n_particles: int) -> _Walk:
    """Every particle at x0, running, at tick 0."""
    x0 = jnp.broadcast_to(jnp.asarray(x0, jnp.zeros(()).dtype), (n_particles, dynamic.dim))
    return _Walk(x0, jnp.zeros(n_particles, jnp.int8), jnp.zeros(n_particles, jnp.int32),
                 jnp.zeros((), jnp.int32))


def _max_steps(dynamic, t_max):
    return jnp.ceil(t_max / dynamic.dt - 1e-9).astype(jnp.int32)


def advance_exits(key, dynamic, region, walk: _Walk, ids, t_max, max_ticks, *, correction=None,
                  ticks_per_block: int = 32, divergence_bound=1e8) -> _Walk:
    """Step ``walk`` until all particles are done, t_max is reached, or ``max_ticks`` more ticks
    (rounded up to whole blocks) have run. ``ids`` are the particles' global stream indices."""
    spec = exit_spec(dynamic, correction)
    steps_per_tick = rng.plan(spec)[0]
    max_steps = _max_steps(dynamic, t_max)
    stop_tick = walk.tick + max_ticks

    def visit(w, x_old, x_new, extra, k):
        active = (w.status == RUNNING) & (k < max_steps)
        bad = _diverged(x_new, divergence_bound)
        uniform = extra[0][:, 0] if extra else jnp.zeros(x_new.shape[0])
        out = jax.vmap(lambda a, b, u: exited(region, dynamic, a, b, u, correction))(
            x_old, x_new, uniform)
        new_status = jnp.where(bad, DIVERGED, jnp.where(out, ESCAPED, RUNNING))
        done = active & (new_status != RUNNING)
        return w._replace(
            x=jnp.where((active & ~bad)[:, None], x_new, w.x),
            status=jnp.where(active, new_status, w.status).astype(jnp.int8),
            exit_step=jnp.where(done, k + 1, w.exit_step),
        )

    def block(w):
        def body(w, _):
            return _tick(key, dynamic, ids, w, spec, visit), None

        return jax.lax.scan(body, w, None, length=ticks_per_block)[0]

    def keep_going(w):
        return (jnp.any(w.status == RUNNING) & (w.tick * steps_per_tick < max_steps)
                & (w.tick < stop_tick))

    return jax.lax.while_loop(keep_going, block, walk)


def exit_record(dynamic, walk: _Walk, t_max) -> ExitRecord:
    """Per-particle exit times (or censoring times) from a finished walk."""
    t_cens = _max_steps(dynamic, t_max) * dynamic.dt
    censored = walk.status == RUNNING
    time = jnp.where(censored, t_cens, walk.exit_step * dynamic.dt)
    return ExitRecord(time, walk.status == ESCAPED, walk.status == DIVERGED, censored, t_cens)


def simulate_exits(key, dynamic, region, x0, n_particles: int, t_max, *, correction=None,
                   first_particle=0, ticks_per_block: int = 32, divergence_bound=1e8):
    """First exit of ``n_particles`` copies of ``dynamic`` started at x0 from ``region``.

    Args:
      key: a JAX PRNG key.
      dynamic: ``EulerMaruyama`` (any SDE), ``MinibatchSGD`` or any object with ``dt``,
        ``noise_spec``, ``step`` (and ``std_along`` for boundary corrections).
      region: ``Halfspace``/``Threshold``, ``Ball``, ``Interval`` or any object with
        ``distance`` and ``normal``.
      x0: start, shape (d,), strictly inside the region.
      n_particles: static particle count.
      t_max: censoring time (t = k * lr units).
      correction: None, "gobet" or "bridge" (``sgdyn.regions``).
      first_particle: global index of the first particle (selects the noise streams).

    Returns: an ``ExitRecord``.
    """
    ids = first_particle + jnp.arange(n_particles, dtype=jnp.uint32)
    walk = advance_exits(key, dynamic, region, init_walk(dynamic, x0, n_particles), ids,
                         t_max, jnp.iinfo(jnp.int32).max // 2, correction=correction,
                         ticks_per_block=ticks_per_block, divergence_bound=divergence_bound)
    return exit_record(dynamic, walk, t_max)


class SampleRecord(NamedTuple):
    x: jax.Array  # (n_samples, N, d)
    diverged: jax.Array  # (N,) bool
    thin_steps: int  # steps between samples actually used
    burn_in_steps: int


def simulate_samples(key, dynamic, x0, n_particles: int, burn_in: int, n_samples: int,
                     thin: int = 1, *, first_particle=0, divergence_bound=1e8):
    """States of the ensemble after ``burn_in`` steps and then every ``thin`` steps.

    Steps are grouped in ticks (``sgdyn.rng.plan``); ``burn_in`` and ``thin`` are rounded up to
    whole ticks and the values used are returned. Memory: n_samples * n_particles * d numbers.
    """
    spec = dynamic.noise_spec
    g = rng.plan(spec)[0]
    burn_ticks, thin_ticks = -(-burn_in // g), max(1, -(-thin // g))
    ids = first_particle + jnp.arange(n_particles, dtype=jnp.uint32)

    def visit(walk, x_old, x_new, extra, k):
        bad = _diverged(x_new, divergence_bound) | (walk.status == DIVERGED)
        return walk._replace(x=jnp.where(bad[:, None], x_old, x_new),
                             status=jnp.where(bad, DIVERGED, walk.status).astype(jnp.int8))

    def advance(walk, n_ticks):
        def body(w, _):
            return _tick(key, dynamic, ids, w, spec, visit), None

        return jax.lax.scan(body, walk, None, length=n_ticks)[0]

    walk = init_walk(dynamic, x0, n_particles)
    walk = advance(walk, burn_ticks) if burn_ticks else walk

    def sample(w, _):
        w = advance(w, thin_ticks)
        return w, w.x

    walk, xs = jax.lax.scan(sample, walk, None, length=n_samples)
    return SampleRecord(xs, walk.status == DIVERGED, thin_ticks * g, burn_ticks * g)
