r"""One call from a dynamic to an exit-time measurement: validate, compile once, run, estimate.

``measure_exit_times`` checks every argument before anything is traced, runs the jitted engine
(in chunks of particles if asked: results are identical either way, since each particle owns
its random stream), and returns the per-particle record with a censoring-aware estimate.

Escape times are roughly exponential, so the last of N particles leaves about ln N mean times
after the start; stepping all N until then wastes most of the work on finished particles. The
driver therefore runs in segments and, whenever at most half of the particles are still
running, *compacts*: it keeps only the running ones, padded to the next power of two, and goes
on. Particles keep their stream index, so compaction changes no result, only the cost (about
1.4 N * mean instead of N * mean * ln N particle-steps), at the price of one compilation per
array size; the sizes are powers of two (>= ``min_bucket``), so later runs reuse them.
``Slots`` keeps the host-side bookkeeping, shared with ``sgdyn.sharding``.
``sweep_exit_times`` runs a stack of dynamics (e.g. eight sharpness values) in one compiled
call, without compaction.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .checkpoint import Checkpoint, fingerprint
from .ensemble import (RUNNING, ExitRecord, _Walk, advance_exits, exit_record, exit_spec,
                       init_walk, simulate_exits, simulate_samples)
from .estimators import ExitEstimate, exit_time_estimate
from .regions import CORRECTIONS, check_start
from .rng import plan

_STATIC = ("n_particles", "correction", "ticks_per_block")


class ExitResult(NamedTuple):
    record: ExitRecord  # numpy arrays
    estimate: ExitEstimate


def _validate(dynamic, region, x0, n_particles, t_max, correction, chunk_size):
    n_particles = _checks.positive_int("n_particles", n_particles)
    _checks.positive("t_max", t_max)
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction is not None and not hasattr(dynamic, "std_along"):
        raise ValueError(f"correction={correction!r} needs an SDE dynamic (Euler-Maruyama); "
                         f"{type(dynamic).__name__} has no noise level to correct with")
    _checks.finite("x0", x0)
    x0 = np.atleast_1d(np.asarray(x0, float))
    if x0.shape != (dynamic.dim,):
        raise ValueError(f"x0 must have shape ({dynamic.dim},), got {x0.shape}")
    dt = np.asarray(dynamic.dt)
    if np.any(np.asarray(t_max) / dt >= 2**31 - 1):
        raise ValueError(f"t_max / dt must be < 2^31 steps, got t_max={t_max}, dt={dt}")
    if chunk_size is not None:
        _checks.positive_int("chunk_size", chunk_size)
    return n_particles, x0


_ADV_STATIC = ("correction", "ticks_per_block")
_advance = jax.jit(advance_exits, static_argnames=_ADV_STATIC)
_record = jax.jit(exit_record)
PAD = 3  # status of padding slots after compaction (neither running nor recorded)


def to_numpy(record) -> ExitRecord:
    """An ExitRecord (possibly on device) as numpy arrays and a float t_max."""
    return ExitRecord(*(np.asarray(getattr(record, f)) for f in ExitRecord._fields[:-1]),
                      float(record.t_max))


def result(record: ExitRecord, confidence: float = 0.95) -> ExitResult:
    """A numpy record with its censoring-aware estimate."""
    return ExitResult(record, exit_time_estimate(record.time, record.escaped, record.censored,
                                                 record.diverged, confidence))


class Slots:
    """Host-side bookkeeping of a compacting run: which particle each array slot holds
    (-1 for padding) and the outcome of the particles that have finished."""

    def __init__(self, n_particles: int, size: int | None = None):
        size = n_particles if size is None else size
        self.slot = np.where(np.arange(size) < n_particles, np.arange(size), -1)
        self.status = np.zeros(n_particles, np.int8)
        self.exit_step = np.zeros(n_particles, np.int64)

    def statuses(self):
        """Initial (or post-compaction) status of every slot: running, or padding."""
        return np.where(self.slot >= 0, RUNNING, PAD).astype(np.int8)

    def save(self, status, exit_step):
        real = self.slot >= 0
        self.status[self.slot[real]] = status[real]
        self.exit_step[self.slot[real]] = exit_step[real]

    def compact(self, running, size):
        """Slot indices to keep, the running ones padded to ``size`` (the caller gathers them)."""
        keep = np.flatnonzero(running)
        take = np.concatenate([keep, np.full(size - keep.size, keep[0])])
        self.slot = np.concatenate([self.slot[keep], np.full(size - keep.size, -1)])
        return take

    def record(self, dynamic, tick, t_max) -> ExitRecord:
        final = _Walk(jnp.zeros((self.status.size, dynamic.dim)), jnp.asarray(self.status),
                      jnp.asarray(self.exit_step, jnp.int32), jnp.asarray(tick, jnp.int32))
        return to_numpy(_record(dynamic, final, t_max))


def compacted_size(n_running: int, min_bucket: int, multiple: int = 1) -> int:
    """The next power of two >= n_running (and >= min_bucket), rounded up to ``multiple``."""
    size = max(min_bucket, 1 << int(max(n_running, 1) - 1).bit_length())
    return -(-size // multiple) * multiple


def run_limits(dynamic, t_max, correction) -> tuple[int, int]:
    """(steps per tick, total steps before censoring) of an exit run, as host integers."""
    return (plan(exit_spec(dynamic, correction))[0],
            int(np.ceil(float(t_max) / float(dynamic.dt) - 1e-9)))


def _run_compacting(key, dynamic, region, x0, ids, t_max, correction, ticks_per_block,
                    min_bucket):
    """Exit records for particles ``ids``, compacting the running ones as they thin out."""
    slots = Slots(ids.shape[0])
    walk = init_walk(dynamic, jnp.asarray(x0), ids.shape[0])
    ids = jnp.asarray(ids)
    steps_per_tick, max_steps = run_limits(dynamic, t_max, correction)
    seg_ticks = 64
    while True:
        walk = _advance(key, dynamic, region, walk, ids, t_max, seg_ticks, correction=correction,
                        ticks_per_block=ticks_per_block)
        st = np.asarray(walk.status)
        running = st == RUNNING
        tick = int(walk.tick)
        finished = (not running.any()) or tick * steps_per_tick >= max_steps
        target = compacted_size(int(running.sum()), min_bucket)
        if finished or target < st.shape[0]:
            slots.save(st, np.asarray(walk.exit_step))
            if finished:
                break
            take = slots.compact(running, target)
            walk = _Walk(walk.x[take], jnp.asarray(slots.statuses()), walk.exit_step[take],
                         walk.tick)
            ids = ids[take]
        seg_ticks = max(64, tick // 8)  # segments grow with the run: few host round trips
    return slots.record(dynamic, tick, t_max)


def measure_exit_times(key, dynamic, region, x0, n_particles: int, t_max, *, correction=None,
                       chunk_size: int | None = None, confidence: float = 0.95,
                       ticks_per_block: int = 32, min_bucket: int = 512,
                       checkpoint=None) -> ExitResult:
    """Exit times of ``n_particles`` runs of ``dynamic`` from ``region`` (see simulate_exits).

    Particles are processed ``chunk_size`` at a time (default: all at once), compacting as
    they leave; the record is identical for every chunk size and with or without compaction.
    With ``checkpoint`` (a folder or ``sgdyn.checkpoint.Checkpoint``) every finished chunk is
    saved, and a re-run with the same arguments resumes from the chunks already done.
    """
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, chunk_size)
    check_start(region, x0)
    _checks.positive_int("min_bucket", min_bucket)
    chunk = chunk_size or n_particles
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    parts = []
    for first in range(0, n_particles, chunk):
        n = min(chunk, n_particles - first)
        ids = first + np.arange(n, dtype=np.uint32)
        tag = None
        if checkpoint is not None:
            tag = fingerprint(key, dynamic, region, x0, float(t_max), str(correction), first, n)
            saved = checkpoint.load(tag)
            if saved is not None:
                parts.append(ExitRecord(**{f: saved[f] for f in ExitRecord._fields}))
                continue
        rec = _run_compacting(key, dynamic, region, x0, ids, t_max, correction,
                              ticks_per_block, min_bucket)
        if checkpoint is not None:
            checkpoint.save(tag, rec._asdict())
        parts.append(rec)
    record = ExitRecord(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ExitRecord._fields[:-1]), t_max=float(parts[0].t_max))
    return result(record, confidence)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep(key, dynamics, regions, x0, n_particles, t_max, correction, ticks_per_block):
    run = lambda dyn, reg, x, t: simulate_exits(  # noqa: E731
        key, dyn, reg, x, n_particles, t, correction=correction,
        ticks_per_block=ticks_per_block)
    return jax.vmap(run)(dynamics, regions, x0, t_max)


def _per_item(value, m, name):
    items = list(value) if isinstance(value, (list, tuple)) else [value] * m
    if len(items) != m:
        raise ValueError(f"{name} must be one value or a list of {m} (one per dynamic), "
                         f"got {len(items)}")
    return items


def sweep_exit_times(key, dynamics, regions, x0, n_particles: int, t_max, *, correction=None,
                     confidence: float = 0.95, ticks_per_block: int = 32) -> list[ExitResult]:
    """Exit times for a list of same-shaped dynamics (a sweep), in one compiled call.

    ``regions`` and ``t_max`` are each one value shared by all, or a list with one per
    dynamic; ``x0`` is one start of shape (d,) or an (m, d) array. Every dynamic shares the key and particle ids (common random numbers across the
    sweep, which makes differences between sweep points less noisy).
    """
    dynamics = list(dynamics)
    m = len(dynamics)
    if m == 0:
        raise ValueError("dynamics must be a non-empty list")
    regions = _per_item(regions, m, "regions")
    t_max = _per_item(t_max, m, "t_max")
    x0 = np.asarray(x0, float)
    x0 = list(x0) if x0.ndim == 2 else [np.atleast_1d(x0)] * m  # one start, or one per dynamic
    if len(x0) != m:
        raise ValueError(f"x0 must be one start or an (m, d) array with m={m}, got {len(x0)}")
    for dyn, reg, x, t in zip(dynamics, regions, x0, t_max):
        n_particles, x = _validate(dyn, reg, x, n_particles, t, correction, None)
        check_start(reg, x)
    recs = jax.device_get(_sweep(key, stack(dynamics), stack(regions), jnp.asarray(np.stack(x0)),
                                 n_particles, jnp.asarray(t_max, float), correction,
                                 ticks_per_block))
    return [result(to_numpy(jax.tree.map(lambda a: a[i], recs)), confidence) for i in range(m)]


def stack(items):
    """Stack a list of same-structure pytrees (dynamics, landscapes) along a new leading axis."""
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *items)


_samples = jax.jit(simulate_samples, static_argnames=("n_particles", "burn_in", "n_samples",
                                                       "thin"))


def sample_stationary(key, dynamic, x0, n_particles: int, burn_in: int, n_samples: int = 1,
                      thin: int = 1):
    """Long-run samples: the ensemble after ``burn_in`` steps, then every ``thin`` steps.

    Validates its arguments, then runs the jitted ``simulate_samples``. Returns
    (samples of shape (n_samples, n_particles, d), diverged mask of shape (n_particles,)).
    Diverged particles (NaN/inf, |x| > 1e8) are frozen and flagged; drop them before fitting.
    Memory is n_samples * n_particles * d numbers; steps are rounded up to whole ticks.
    """
    n_particles = _checks.positive_int("n_particles", n_particles)
    n_samples = _checks.positive_int("n_samples", n_samples)
    thin = _checks.positive_int("thin", thin)
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
        raise ValueError(f"burn_in must be an integer >= 0 (steps), got {burn_in!r}")
    _checks.finite("x0", x0)
    x0 = np.atleast_1d(np.asarray(x0, float))
    if x0.shape != (dynamic.dim,):
        raise ValueError(f"x0 must have shape ({dynamic.dim},), got {x0.shape}")
    rec = _samples(key, dynamic, jnp.asarray(x0), n_particles, int(burn_in), n_samples, thin)
    return np.asarray(rec.x), np.asarray(rec.diverged)
