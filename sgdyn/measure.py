r"""One call from a dynamic to an exit-time measurement: validate, compile once, run, estimate.

``measure_exit_times`` checks every argument before anything is traced, runs the jitted engine
(in chunks of particles if asked: results are identical either way, since each particle owns
its random stream), and returns the per-particle record with a censoring-aware estimate.

Escape times are roughly exponential, so stepping all N particles until the last one leaves
would waste most of the work on finished ones: ``sgdyn.runner`` refills the slots of finished
particles with waiting ones and packs the last stragglers (about N mean exit times of
particle-steps in all, one compilation per dynamic and shape), without changing any number.
``sweep_exit_times`` runs a list of dynamics (e.g. eight sharpness values) in one call.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .checkpoint import Checkpoint, code_tag, fingerprint
from .ensemble import MAX_STEPS, ExitRecord, exits_unchecked, simulate_samples
from .estimators import ExitEstimate, exit_time_estimate
from .regions import check_correction, check_region, check_start
from .runner import check_bound, check_options, run_exits

_STATIC = ("n_particles", "correction", "ticks_per_block")
CHECKPOINT_MIN_CHUNK = 2**14  # particles per checkpointed chunk at least (a CPU's slot count)


class ExitResult(NamedTuple):
    """What ``measure_exit_times`` returns: every particle's record and the estimate."""

    record: ExitRecord  # numpy arrays
    estimate: ExitEstimate


def _start(dynamic, x0) -> np.ndarray:
    """x0 as a finite start of shape (d,) for ``dynamic``, or a ValueError naming it."""
    _checks.finite("x0", x0)
    x0 = np.atleast_1d(np.asarray(x0, float))
    if x0.shape != (dynamic.dim,):
        raise ValueError(f"x0 must have shape ({dynamic.dim},), got {x0.shape}")
    return x0


def _particles_and_dynamic(n_particles, dynamic) -> int:
    """n_particles as an int in [1, 2^32), and a ValueError for a stacked dynamic."""
    n_particles = _checks.positive_int("n_particles", n_particles)
    if n_particles >= 2**32:  # particle ids are uint32 (they index the noise streams)
        raise ValueError(f"n_particles must be < 2^32, got {n_particles}")
    if np.ndim(dynamic.dt) != 0:  # else a TypeError or a shape error naming nothing
        raise ValueError(f"dynamic must be one dynamic, not a stack of {np.shape(dynamic.dt)[0]} "
                         f"(sgdyn.stack): pass the list to sweep_exit_times")
    return n_particles


def _validate(dynamic, region, x0, n_particles, t_max, correction, chunk_size,
              confidence=0.95):
    _checks.in_range("confidence", confidence, 0.0, 1.0)  # before the run, not after it
    n_particles = _particles_and_dynamic(n_particles, dynamic)
    _checks.positive("t_max", _checks.scalar("t_max", t_max))
    check_correction(correction, dynamic)
    x0 = _start(dynamic, x0)
    check_region(region, dynamic.dim)
    dt = np.asarray(dynamic.dt)
    # step counts are int32, and a block may run up to ticks_per_block x steps_per_tick steps
    # (at most 2^30, ensemble._check_block) past t_max before it is censored
    if np.any(np.asarray(t_max) / dt >= MAX_STEPS + 1):
        raise ValueError(f"t_max / dt must be < 2^30 steps, got t_max={t_max}, dt={dt}")
    if chunk_size is not None:
        _checks.positive_int("chunk_size", chunk_size)
    return n_particles, x0


def _bound_tag(divergence_bound):
    # the default adds nothing to a checkpoint's fingerprint: chunks saved before it was an
    # argument still match
    return () if float(divergence_bound) == 1e8 else (float(divergence_bound),)


def result(record: ExitRecord, dynamic, confidence: float = 0.95) -> ExitResult:
    """A numpy record of ``dynamic`` with its censoring-aware estimate (on its grid of steps)."""
    return ExitResult(record, exit_time_estimate(record.time, record.escaped, record.censored,
                                                 record.diverged, confidence,
                                                 dt=float(np.asarray(dynamic.dt))))


def measure_exit_times(key, dynamic, region, x0, n_particles: int, t_max, *, correction=None,
                       chunk_size: int | None = None, confidence: float = 0.95,
                       ticks_per_block: int = 32, min_bucket: int | None = None,
                       n_slots: int | None = None, checkpoint=None,
                       divergence_bound=1e8) -> ExitResult:
    """Exit times of ``n_particles`` runs of ``dynamic`` from ``region`` (see simulate_exits).

    Particles are processed ``chunk_size`` at a time (default: all at once) through
    ``n_slots`` slots (default ``sgdyn.runner.default_slots()``: 16384 on a CPU, 2^20 on an
    accelerator), refilled as particles leave and packed at the end (``sgdyn.runner``: on a
    CPU into ever smaller arrays of no fewer than ``min_bucket`` slots, by default 2048, or
    256 / 32 for runs of 2^17 / 2^21 steps and more; on an accelerator once);
    the record is identical for every chunk size, slot count and device count.
    On a CPU a run starts in one loop over 4096 slots, which compiles in about half the
    time, and moves to the full array only once it proves long (``sgdyn.runner``, first tier;
    not when ``n_slots`` is given, nor for a run whose stragglers would be packed below 2048
    slots: a long run or a smaller ``min_bucket``).
    A particle with a coordinate past ``divergence_bound`` (or NaN/inf) is diverged, counted
    apart and left out of the estimate: raise it for a region that reaches further.
    With ``checkpoint`` (a folder or ``sgdyn.checkpoint.Checkpoint``) every finished chunk is
    saved, and a re-run with the same arguments on the same code (``checkpoint.code_tag``:
    sgdyn's source files, and those defining your own landscape or region classes) resumes
    from the chunks already done; without
    ``chunk_size`` it then takes chunks of max(n_particles / 8, 16384) (set by n_particles
    alone, so a resume on another backend or slot count finds them), and a killed run keeps
    most of its work.
    """
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, chunk_size,
                                confidence)
    check_start(region, x0)
    check_options(n_slots, min_bucket)  # before any chunk, even if all come from a checkpoint
    check_bound(divergence_bound, x0)
    chunk = chunk_size or n_particles
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    code = code_tag(dynamic, region) if checkpoint is not None else ()
    if checkpoint is not None and chunk_size is None:
        whole = fingerprint(key, dynamic, region, x0, float(t_max), str(correction), 0,
                            n_particles, *_bound_tag(divergence_bound), *code)
        # a whole run saved as one chunk (as before chunking by default) is still reused
        if checkpoint.load(whole) is None:
            chunk = max(-(-n_particles // 8), CHECKPOINT_MIN_CHUNK)
    parts = []
    for first in range(0, n_particles, chunk):
        n = min(chunk, n_particles - first)
        tag = None
        if checkpoint is not None:
            tag = fingerprint(key, dynamic, region, x0, float(t_max), str(correction), first, n,
                              *_bound_tag(divergence_bound), *code)
            saved = checkpoint.load(tag)
            if saved is not None:
                parts.append(ExitRecord(**{f: saved[f] for f in ExitRecord._fields}))
                continue
        rec = run_exits(key, dynamic, region, x0, first, n, t_max, correction=correction,
                        n_slots=n_slots, ticks_per_block=ticks_per_block, min_bucket=min_bucket,
                        divergence_bound=divergence_bound)
        if checkpoint is not None:
            checkpoint.save(tag, rec._asdict())
        parts.append(rec)
    record = ExitRecord(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ExitRecord._fields[:-1]), t_max=float(parts[0].t_max))
    return result(record, dynamic, confidence)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep(key, dynamics, regions, x0, n_particles, t_max, correction, ticks_per_block):
    run = lambda dyn, reg, x, t: exits_unchecked(  # noqa: E731
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
                     confidence: float = 0.95, ticks_per_block: int = 32,
                     vectorized: bool = False, n_slots: int | None = None,
                     min_bucket: int | None = None) -> list[ExitResult]:
    """Exit times for a list of same-shaped dynamics (a sweep, e.g. eight sharpness values).

    ``regions`` and ``t_max`` are each one value shared by all, or a list with one per
    dynamic; ``x0`` is one start of shape (d,) or an (m, d) array. Every dynamic shares the
    key and particle ids (common random numbers across the sweep, which makes differences
    between sweep points less noisy).

    By default each member runs through the refilling runner (``sgdyn.runner``), one after
    another: parameters are traced, so the kernels compile once for the whole sweep (with
    two or more members on the full slot array from the start, no first tier: see
    ``sgdyn.runner``), and the records equal ``measure_exit_times`` member by member (same
    ``n_slots``, ``min_bucket``).
    ``vectorized=True`` runs all members in one compiled vmapped call
    instead, every member until its slowest particle is done (no refilling: several times
    slower on a CPU, same numbers up to float rounding); it has no slots, so it takes no
    ``n_slots`` or ``min_bucket``.
    """
    check_options(n_slots, min_bucket)
    if vectorized and (n_slots is not None or min_bucket is not None):
        raise ValueError("n_slots and min_bucket set the refilling runner's arrays: "
                         "vectorized=True runs without them (leave them None)")
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
        n_particles, x = _validate(dyn, reg, x, n_particles, t, correction, None, confidence)
        check_start(reg, x)
    if not vectorized:
        return [result(run_exits(key, dyn, reg, np.atleast_1d(x), 0, n_particles, t,
                                 correction=correction, n_slots=n_slots,
                                 ticks_per_block=ticks_per_block, min_bucket=min_bucket,
                                 first_tier=m == 1),
                       dyn, confidence)
                for dyn, reg, x, t in zip(dynamics, regions, x0, t_max)]
    recs = jax.device_get(_sweep(key, stack(dynamics), stack(regions), jnp.asarray(np.stack(x0)),
                                 n_particles, jnp.asarray(t_max, float), correction,
                                 ticks_per_block))
    return [result(_to_numpy(jax.tree.map(lambda a: a[i], recs)), dyn, confidence)
            for i, dyn in enumerate(dynamics)]


def _to_numpy(record) -> ExitRecord:
    """An ExitRecord fetched from the device: numpy arrays and a float t_max."""
    return ExitRecord(*(np.asarray(getattr(record, f)) for f in ExitRecord._fields[:-1]),
                      float(record.t_max))


def stack(items):
    """Stack a list of same-structure pytrees (dynamics, landscapes) along a new leading axis."""
    items = list(items)
    if not items:
        raise ValueError("stack: items must be a non-empty list")
    first = jax.tree.structure(items[0])
    for i, item in enumerate(items[1:], 1):
        if jax.tree.structure(item) != first:  # else JAX's pytree error, naming no field
            raise ValueError(f"stack: every item must have the first one's type and static "
                             f"fields (batch_size, increments, dim, ...); item {i} differs: "
                             f"{jax.tree.structure(item)} against {first} (a sweep of such "
                             f"members runs with vectorized=False)")
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *items)


_samples = jax.jit(simulate_samples, static_argnames=("n_particles", "burn_in", "n_samples",
                                                       "thin"))


def sample_stationary(key, dynamic, x0, n_particles: int, burn_in: int, n_samples: int = 1,
                      thin: int = 1):
    """Long-run samples: the ensemble at steps burn_in + thin, burn_in + 2 thin, ...,
    burn_in + n_samples * thin.

    Validates its arguments, then runs the jitted ``simulate_samples``. Returns
    (samples of shape (n_samples, n_particles, d), diverged mask of shape (n_particles,)).
    Diverged particles (NaN/inf, |x| > 1e8) are flagged and NaN from the tick they diverged;
    drop them before fitting.
    Memory is n_samples * n_particles * d numbers. Steps come in ticks (``sgdyn.rng.plan``: 2
    steps for 1-D Gaussian increments, 4 for three-point, 64 for two-point ones), so ``burn_in``
    and ``thin`` are rounded up to whole ticks, with a RuntimeWarning when that more than
    doubles either (``simulate_samples`` returns the values used).
    """
    n_particles = _particles_and_dynamic(n_particles, dynamic)
    n_samples = _checks.positive_int("n_samples", n_samples)
    thin = _checks.positive_int("thin", thin)
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
        raise ValueError(f"burn_in must be an integer >= 0 (steps), got {burn_in!r}")
    if burn_in + n_samples * thin > MAX_STEPS:  # ticks count in int32, and streams below 2^31
        raise ValueError(f"burn_in + n_samples * thin must be at most 2^30 - 1 steps, got "
                         f"{burn_in + n_samples * thin}")
    x0 = _start(dynamic, x0)
    if not np.all(np.abs(x0) < 1e8):  # the kernel's divergence bound: all NaN, silently
        raise ValueError(f"x0 must lie within |x0_j| < 1e8 (past it a particle is diverged), "
                         f"got {x0}")
    rec = _samples(key, dynamic, jnp.asarray(x0), n_particles, int(burn_in), n_samples, thin)
    used = (int(rec.burn_in_steps), int(rec.thin_steps))
    if used[0] > 2 * int(burn_in) or used[1] > 2 * thin:  # not the default thin=1 -> 2
        warnings.warn(f"burn_in and thin were rounded up to whole ticks of this dynamic's "
                      f"increments: burn_in {burn_in} -> {used[0]}, thin {thin} -> {used[1]} "
                      f"steps", RuntimeWarning, stacklevel=2)
    return np.asarray(rec.x), np.asarray(rec.diverged)
