r"""The ensemble engine: many independent particles of one dynamic, stepped in lockstep.

Two pure, jittable kernels (no hidden jit or vmap over parameters; vmap them over a stacked
dynamic for a sweep):

- ``simulate_exits``: steps until every particle has left the region or t_max is reached,
  recording each particle's first exit time on the fly (no trajectories are stored). The loop
  is a ``lax.while_loop`` (to stop early) over blocks of a fixed-length ``lax.scan``.
- ``simulate_samples``: runs a burn-in and records the ensemble every ``thin`` steps.

``advance_exits`` is the loop behind ``simulate_exits``; given a queue of waiting particles it
also refills the slots of finished ones after every block (``sgdyn.runner`` drives it).

The noise of particle i at its k-th tick is drawn from its own counter-based stream
(``sgdyn.rng``), indexed by its global id and its age k, never by its slot or by the wall
clock; running particles in chunks, refilled slots, on several devices, or all at once gives
bit-identical per-particle results. Times are in t = k * lr units (k steps of size dt).

Particles whose state becomes NaN/inf or leaves the box |x_j| < divergence_bound are *diverged*:
counted apart, neither escaped nor censored (an exit run freezes them, a sample run makes them
NaN from then on).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .regions import exited
from .rng import NoiseSpec

RUNNING, ESCAPED, DIVERGED, PAD = 0, 1, 2, 3


class ExitRecord(NamedTuple):
    """Per-particle outcome: ``time`` is the exit time if escaped, else the censoring time."""

    time: jax.Array  # (N,)  t = k * lr units
    escaped: jax.Array  # (N,) bool
    diverged: jax.Array  # (N,) bool
    censored: jax.Array  # (N,) bool, still inside at t_max
    t_max: jax.Array  # the censoring time actually used: ceil(t_max / dt) * dt


class _Walk(NamedTuple):
    """The slots of a run: each holds one particle (stream ``ids``) at ``age`` ticks since its
    start. Ages are per slot, so a slot can be refilled with a new particle mid-run."""

    x: jax.Array  # (N, d)
    status: jax.Array  # (N,) int8: RUNNING, ESCAPED, DIVERGED or PAD (an empty slot)
    exit_step: jax.Array  # (N,) int32, steps until the exit (0 while running)
    age: jax.Array  # (N,) int32 ticks since the particle started
    ids: jax.Array  # (N,) uint32 global particle index (selects the noise stream)


class _Queue(NamedTuple):
    """Particles waiting for a slot, ``next`` to ``end`` - 1, and the outcome of those that
    have left their slot, indexed by particle id - ``first``."""

    next: jax.Array  # () uint32
    end: jax.Array  # () uint32
    first: jax.Array  # () uint32
    status: jax.Array  # (M,) int8
    exit_step: jax.Array  # (M,) int32


def _spec_with_uniform(spec: NoiseSpec, extra_uniform: bool) -> NoiseSpec:
    return NoiseSpec(spec.parts + ((("uniform", 1),) if extra_uniform else ()))


def exit_spec(dynamic, correction) -> NoiseSpec:
    """What one step of an exit run consumes: the dynamic's noise, plus a uniform for the
    Brownian-bridge test."""
    return _spec_with_uniform(dynamic.noise_spec, correction == "bridge")


def _diverged(x, bound):
    # one comparison per coordinate: NaN <= bound is False, so NaN and inf count as diverged
    return ~jnp.all(jnp.abs(x) <= bound, axis=-1)


def _tick(key, dynamic, walk: _Walk, spec: NoiseSpec, visit, share_words: bool = True):
    """Advance every particle through one tick (the steps one Threefry call per particle feeds).

    ``visit(walk, x_old, x_new, extra, step_index) -> walk`` folds one step into the state.
    ``share_words``: compute the tick's random words once, into a buffer that every step
    reads (see below); without it XLA may fuse them into the steps that use them.
    """
    steps, calls = rng.plan(spec)
    # computed once per tick into a buffer: left to itself XLA fuses Threefry into each step
    # that reads a word, recomputing all 20 rounds per step
    words = rng.threefry_words(key, walk.ids, walk.age * calls, calls)
    if share_words:
        words = jax.lax.optimization_barrier(words)
    step = jax.vmap(dynamic.step)
    n_dyn = len(dynamic.noise_spec.parts)

    def substep(s, w):
        noise = rng.take(words, s, spec)
        x_new = step(w.x, noise[:n_dyn])
        return visit(w, w.x, x_new, noise[n_dyn:], walk.age * steps + s)

    if steps <= 4:  # Gaussian or three-point increments: unroll the (at most four) steps
        for s in range(steps):
            walk = substep(s, walk)
    else:  # bit-packed increments: up to 64 steps per tick, in a loop to keep compiles small
        walk = jax.lax.fori_loop(0, steps, substep, walk)
    return walk._replace(age=walk.age + 1)


def init_walk(dynamic, x0, ids) -> _Walk:
    """One slot per entry of ``ids``, each particle at x0, running, age 0."""
    n = ids.shape[0]
    x0 = jnp.broadcast_to(jnp.asarray(x0, jnp.zeros(()).dtype), (n, dynamic.dim))
    return _Walk(x0, jnp.zeros(n, jnp.int8), jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32),
                 jnp.asarray(ids, jnp.uint32))


def _max_steps(dynamic, t_max):
    return jnp.ceil(t_max / dynamic.dt - 1e-9).astype(jnp.int32)


def active(status, age, steps_per_tick: int, max_steps):
    """Slots whose particle is still inside and not yet at t_max (jax or numpy arrays)."""
    return (status == RUNNING) & (age * steps_per_tick < max_steps)


def _refill(walk: _Walk, queue: _Queue, x0, live) -> tuple[_Walk, _Queue]:
    """Every slot whose particle is done (``live`` False, slot not empty) hands its outcome to
    the queue and takes the next waiting particle, while there is one."""
    done = ~live & (walk.status != PAD)
    new_id = queue.next + (jnp.cumsum(done) - 1).astype(jnp.uint32)
    swap = done & (new_id < queue.end)
    # a slot that gets no new particle keeps its outcome (the caller reads it from the slot)
    out = jnp.where(swap, walk.ids - queue.first, queue.status.shape[0])  # out of range: dropped
    queue = queue._replace(
        next=queue.next + jnp.sum(swap).astype(jnp.uint32),
        status=queue.status.at[out].set(walk.status, mode="drop"),
        exit_step=queue.exit_step.at[out].set(walk.exit_step, mode="drop"))
    walk = _Walk(x=jnp.where(swap[:, None], x0, walk.x),
                 status=jnp.where(swap, RUNNING, walk.status).astype(jnp.int8),
                 exit_step=jnp.where(swap, 0, walk.exit_step),
                 age=jnp.where(swap, 0, walk.age),
                 ids=jnp.where(swap, new_id, walk.ids))
    return walk, queue


def advance_exits(key, dynamic, region, walk: _Walk, t_max, *, queue: _Queue | None = None,
                  x0=None, stop_below=0, correction=None, ticks_per_block: int = 32,
                  divergence_bound=1e8) -> tuple[_Walk, _Queue | None]:
    """Step the slots of ``walk`` until no particle is running.

    With a ``queue``, after every block of ``ticks_per_block`` ticks each finished slot takes
    the next waiting particle (started at ``x0``), so the array stays full until the queue is
    empty; once it is, the loop also stops when at most ``stop_below`` particles are still
    running (the caller then compacts them into a smaller array). A particle's noise and
    exit step depend only on its id and age, never on its slot.
    """
    spec = exit_spec(dynamic, correction)
    steps_per_tick = rng.plan(spec)[0]
    max_steps = _max_steps(dynamic, t_max)

    def visit(w, x_old, x_new, extra, k):
        live = (w.status == RUNNING) & (k < max_steps)
        bad = _diverged(x_new, divergence_bound)
        uniform = extra[0][:, 0] if extra else jnp.zeros(x_new.shape[0])
        out = jax.vmap(lambda a, b, u: exited(region, dynamic, a, b, u, correction))(
            x_old, x_new, uniform)
        new_status = jnp.where(bad, DIVERGED, jnp.where(out, ESCAPED, RUNNING))
        done = live & (new_status != RUNNING)
        return w._replace(
            x=jnp.where((live & ~bad)[:, None], x_new, w.x),
            status=jnp.where(live, new_status, w.status).astype(jnp.int8),
            exit_step=jnp.where(done, k + 1, w.exit_step),
        )

    def block(state):
        w, q = state

        def body(w, _):
            return _tick(key, dynamic, w, spec, visit), None

        w = jax.lax.scan(body, w, None, length=ticks_per_block)[0]
        if q is not None:
            w, q = _refill(w, q, x0, active(w.status, w.age, steps_per_tick, max_steps))
        return w, q

    def keep_going(state):
        w, q = state
        n_live = jnp.sum(active(w.status, w.age, steps_per_tick, max_steps))
        if q is None:
            return n_live > 0
        return (n_live > 0) & ((q.next < q.end) | (n_live > stop_below))

    return jax.lax.while_loop(keep_going, block, (walk, queue))


def exit_record(dynamic, status, exit_step, t_max) -> ExitRecord:
    """Per-particle exit times (or censoring times) from final statuses and exit steps."""
    t_cens = _max_steps(dynamic, t_max) * dynamic.dt
    censored = status == RUNNING
    time = jnp.where(censored, t_cens, exit_step * dynamic.dt)
    return ExitRecord(time, status == ESCAPED, status == DIVERGED, censored, t_cens)


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
    walk, _ = advance_exits(key, dynamic, region, init_walk(dynamic, x0, ids), t_max,
                            correction=correction, ticks_per_block=ticks_per_block,
                            divergence_bound=divergence_bound)
    return exit_record(dynamic, walk.status, walk.exit_step, t_max)


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
    A particle that reaches NaN/inf or |x_j| > divergence_bound within a tick is flagged
    ``diverged`` and its state is NaN from that tick on (a frozen finite state would bias any
    statistic that forgot the flag; NaN cannot go unnoticed).
    """
    spec = dynamic.noise_spec
    g = rng.plan(spec)[0]
    burn_ticks, thin_ticks = -(-burn_in // g), max(1, -(-thin // g))
    ids = first_particle + jnp.arange(n_particles, dtype=jnp.uint32)

    def visit(walk, x_old, x_new, extra, k):
        return walk._replace(x=x_new)

    def advance(walk, n_ticks):
        # The state is the only output of a tick, so XLA fuses the whole tick (Threefry,
        # decoding, every step, the check) into one pass; a second output (a status array)
        # split it into several passes, each recomputing the steps: 1.3-1.7x slower. For the
        # same reason the Threefry words are not shared through a buffer here.
        def body(w, _):
            new = _tick(key, dynamic, w, spec, visit, share_words=False)
            bad = _diverged(new.x, divergence_bound) | jnp.isnan(w.x[:, 0])
            return new._replace(x=jnp.where(bad[:, None], jnp.nan, new.x)), None

        return jax.lax.scan(body, walk, None, length=n_ticks)[0]

    # every particle has the same age here: one counter instead of an array
    walk = init_walk(dynamic, x0, ids)._replace(age=jnp.int32(0))
    walk = advance(walk, burn_ticks) if burn_ticks else walk

    def sample(w, _):
        w = advance(w, thin_ticks)
        return w, w.x

    walk, xs = jax.lax.scan(sample, walk, None, length=n_samples)
    return SampleRecord(xs, jnp.isnan(walk.x[:, 0]), thin_ticks * g, burn_ticks * g)
