r"""The host side of an exit-time run: a queue of particles, a fixed array of slots, packing.

A run of N particles keeps S <= N slots busy (``n_slots``). Whenever a particle leaves (or
reaches t_max), its slot takes the next particle waiting in the queue, on the device, inside
the jitted loop (``sgdyn.ensemble.advance_exits``): the array stays full. Escape times are
roughly exponential, so once the queue is empty the last particles leave about ln S mean
times after the others; stepping the whole array until then would waste most of the work.
So once the queue is empty and at most S / ``SHRINK`` (and at least ``min_bucket``)
particles still run, the loop packs them into an array of that many slots and goes on there,
and on a CPU again at 1/SHRINK of that, down to ``min_bucket`` (``pack_sizes``): one while
loop per array size in one compiled program, and the whole run is one call (one compilation per
dynamic and shape, no round trips to the host; on a CPU at most two, see below). Particles
keep their ids and ages, so none of this changes a number.

On a CPU a short run's wait is mostly compilation, and the program with a packed loop
compiles about twice what one loop does, for a compiled run up to ~1.7x faster on two cores.
So a run that would pack starts in a first tier: one loop over ``FIRST_TIER_SLOTS`` slots,
allowed ``FIRST_TIER_WORK`` particle-steps (about the work at which the full program's extra
compilation pays for itself here: a second or so). A run that finishes there is done; one
that has only stragglers left finishes there too; one still drawing on its queue moves its
slots and queue into the full array and goes on with the full program. A run whose
stragglers would be packed below ``MIN_BUCKET`` slots (a long run, or a smaller
``min_bucket``) starts on the full array, as the tier would finish them in its own slots. The
allowance is per
shape and process: repeated short runs of one shape use it up, and then, like every run
after one that moved, start on the full array; a sweep starts there at once. Particles keep
their ids and ages, so the record is the same whichever way it went. On a CPU every program
here is compiled with ``CPU_COMPILER_OPTIONS`` (XLA's older fusion emitters, which emit
kernels in about half the time, and 512-bit vectors), or, for a dynamic whose blocks run
coordinate-major (``ensemble.coordinate_major_dim()``: 8 coordinates or more on a CPU), with
``CPU_COORDINATE_MAJOR_OPTIONS``.

With a device mesh (``sgdyn.sharding``) every device runs its own queue (a contiguous range of
particle ids) and its own slots in its own while loop, and packs its own stragglers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _checks
from ._tuned_jit import tuned_jit
from .ensemble import PAD, RUNNING, ExitRecord, _Queue, _Walk, advance_exits, exit_record, \
    exit_spec, max_steps, padded
from .ensemble import _Layout as _BlockLayout
from .rng import plan

AXIS = "particles"
SHRINK = 8  # pack the stragglers once at most 1/SHRINK of the slots run
MIN_BUCKET = 2048  # but into no fewer slots than this (long CPU runs: default_min_bucket)
FIRST_TIER_SLOTS = 4096  # a CPU run starts in one loop over this many slots (module doc;
# against 2048, compiled short runs 10-25% and first calls up to 20% faster on the 2-core VM)
FIRST_TIER_WORK = 2**29  # particle-steps a shape may take there before the full array's
_FIRST_TIER_SPENT: dict = {}  # shape -> particle-steps this process has run in the first tier

# On a CPU every exit program of the runner is compiled with XLA's older CPU fusion emitters,
# which emit its ~30 kernels in about half the time of the MLIR-based default (most of a short
# run's wait), and with 512-bit vectors where the CPU has them, which more than win back the
# step time the older emitters lose (benchmarks/README.md, "Against the targets, in detail").
# All of the runner's programs share the options, so a record never depends on the path its
# run took; against the same kernel jitted with XLA's defaults (``simulate_exits``) a few
# functions (rsqrt, cbrt, tan, atan, asinh) may round differently in the last bit. An XLA that
# does not know an option compiles with its defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_prefer_vector_width": 512}
# Except for dynamics whose blocks run coordinate-major (ensemble._Layout, from 8 coordinates
# on a CPU): under the older emitters their exit test redid the step in each of its passes, and
# 8-D to 32-D exit runs ran 2.6-6.8x slower than with XLA's default emitters (which compile
# them in about the same time). A dynamic always gets the same options, on every path.
CPU_COORDINATE_MAJOR_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


def default_slots() -> int:
    """Slots per run: enough to fill the backend, small enough to stay in cache on a CPU."""
    return 2**14 if jax.default_backend() == "cpu" else 2**20


class _Layout:
    """Where the slot arrays live: one device (``mesh`` None) or split over a 1-D mesh."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.n_dev = 1 if mesh is None else mesh.devices.size

    def put(self, value):
        value = np.asarray(value)
        if self.mesh is None:
            return jax.device_put(value)  # jnp.asarray would compile a copy per dtype
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    def get(self, x) -> np.ndarray:
        """All of a (possibly split, possibly multi-host) array, on every process."""
        if self.mesh is None or jax.process_count() == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class _State(NamedTuple):
    """A run between calls, on the devices: the slots and each device's queue (one entry per
    device). The outcomes travel apart, as (status, exit step) indexed by particle id - first:
    they are the big arrays, handed over (donated) from call to call."""

    walk: _Walk
    q_next: jax.Array
    q_end: jax.Array
    q_first: jax.Array
    n_running: jax.Array  # (n_dev,) int32: slots holding a running particle


@functools.lru_cache(maxsize=64)
def _advance_fn(mesh, correction, ticks_per_block: int, divergence_bound: float, pack_into,
                budgeted: bool = False, coordinate_major: bool = False):
    """jit(advance_exits) on a ``_State``: (key, dynamic, region, x0, n_steps, state,
    outcomes[, max_blocks]) -> ((walk, q_next), outcomes) after it; over a mesh, one loop per
    device (shard_map). ``budgeted`` (one device, no packing): stop after max_blocks blocks.
    ``coordinate_major``: the dynamic's blocks are (``ensemble._Layout``; picks the options)."""

    def local(key, dynamic, region, x0, n_steps, state, outcomes, *max_blocks):
        queue = _Queue(state.q_next[0], state.q_end[0], state.q_first[0], *outcomes)
        walk, queue = advance_exits(key, dynamic, region, state.walk, n_steps, queue, x0=x0,
                                    pack_into=pack_into, n_running=state.n_running[0],
                                    max_blocks=max_blocks[0] if budgeted else None,
                                    correction=correction, ticks_per_block=ticks_per_block,
                                    divergence_bound=divergence_bound)
        return (walk, queue.next[None]), (queue.status, queue.exit_step)

    if mesh is not None:
        assert not budgeted
        split, same = P(AXIS), P()
        local = jax.shard_map(local, mesh=mesh, in_specs=(same,) * 5 + (split, split),
                              out_specs=split, check_vma=False)
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    options = CPU_COORDINATE_MAJOR_OPTIONS if coordinate_major else CPU_COMPILER_OPTIONS
    return tuned_jit(local, options, platform, donate_argnums=(6,))


def pack_sizes(slots: int, min_bucket: int, most: int | None = None) -> tuple[int, ...]:
    """The array sizes the stragglers are packed into, each 1/SHRINK of the one before
    (rounded up to a multiple of 32, as awkward sizes run slowly: see ``ensemble.ALIGN``) and
    none below ``min_bucket``, at most ``most`` of them: (2048,) for 16384 slots and the
    default floor. A size that would not halve the array is left out: its loop would cost a
    compilation and save little."""
    sizes = []
    while ((smaller := padded(max(slots // SHRINK, min_bucket), 32)) <= slots // 2
           and len(sizes) != most):
        sizes.append(smaller)
        slots = smaller
    return tuple(sizes)


def default_min_bucket(n_steps: int) -> int:
    """The packing floor when none is given, from the run's step limit ``n_steps``.

    On a CPU a step costs about in proportion to the slots stepped (2048 slots cost 5-7x what
    256 do), and every array size is one more loop to compile (~0.4 s). A long run's last
    particles take ln(S) + 0.58 mean exit times to leave, so there it pays to pack them down
    to 256 slots (t_max of 2^17 steps or more) or 32 (2^21); short runs keep MIN_BUCKET.
    On an accelerator a step over fewer slots costs no less: MIN_BUCKET throughout.
    """
    if jax.default_backend() != "cpu":
        return MIN_BUCKET
    return 32 if n_steps >= 2**21 else 256 if n_steps >= 2**17 else MIN_BUCKET


def check_options(n_slots, min_bucket) -> None:
    """ValueError naming the argument for a bad slot count or packing floor."""
    if min_bucket is not None:
        _checks.positive_int("min_bucket", min_bucket)
    if n_slots is not None:
        _checks.positive_int("n_slots", n_slots)


def check_bound(divergence_bound, x0) -> None:
    """ValueError naming ``divergence_bound`` unless it is > 0 and past the start: NaN, 0, a
    negative bound or one at or inside |x0_j| would mark every particle diverged at its first
    step."""
    _checks.positive("divergence_bound", divergence_bound)
    reach = np.max(np.abs(np.asarray(x0, float)))
    if not np.all(reach < np.asarray(divergence_bound, float)):
        raise ValueError(f"divergence_bound must exceed the start's largest |x0_j| = {reach:.4g} "
                         f"(a particle past it is diverged), got {divergence_bound!r}")


def _fresh_state(lay: _Layout, x0, first: int, n: int, per_dev: int):
    """(state, outcomes) of particles first .. first + n - 1 split into one queue per device,
    each device's first per_dev particles in its slots at x0 (shape (d,), the engine's float
    type), no outcome yet."""
    n_dev = lay.n_dev
    per_queue = -(-n // n_dev)  # particle ids each device's queue covers
    lo = first + np.arange(n_dev, dtype=np.int64) * per_queue
    hi = np.maximum(np.minimum(lo + per_queue, first + n), lo)
    ids = lo[:, None] + np.arange(per_dev)[None, :]
    filled = (ids < hi[:, None]).ravel()
    size = n_dev * per_dev
    walk = _Walk(lay.put(np.broadcast_to(x0, (size, x0.shape[0]))),
                 lay.put(np.where(filled, RUNNING, PAD).astype(np.int8)),
                 lay.put(np.zeros(size, np.int32)),
                 lay.put(np.where(filled, ids.ravel(), first).astype(np.uint32)))
    q_next = np.minimum(lo + per_dev, hi)
    state = _State(walk, lay.put(q_next.astype(np.uint32)), lay.put(hi.astype(np.uint32)),
                   lay.put(lo.astype(np.uint32)), lay.put((q_next - lo).astype(np.int32)))
    return state, (lay.put(np.full(n_dev * per_queue, PAD, np.int8)),  # PAD: no outcome yet
                   lay.put(np.zeros(n_dev * per_queue, np.int32)))


def _widen(state: _State, x0, size: int) -> _State:
    """The run of ``state`` (one device, ``n_running`` up to date) in ``size`` slots: its slots
    first, then the next particles waiting in the queue, at x0 and age 0."""
    walk = jax.device_get(state.walk)
    q_next, q_end = int(state.q_next[0]), int(state.q_end[0])
    old = walk.ids.shape[0]
    take = min(size - old, q_end - q_next)
    ids = np.zeros(size, np.uint32)
    ids[:old], ids[old:old + take] = walk.ids, q_next + np.arange(take)
    status = np.full(size, PAD, np.int8)
    status[:old], status[old:old + take] = walk.status, RUNNING
    wide = _Walk(np.concatenate([walk.x, np.broadcast_to(x0, (size - old, x0.shape[0]))]),
                 status, np.concatenate([walk.age, np.zeros(size - old, np.int32)]), ids)
    return state._replace(walk=jax.device_put(wide),
                          q_next=jax.device_put(np.array([q_next + take], np.uint32)),
                          n_running=state.n_running + np.int32(take))


def _first_tier(args, options, start, budget: int, advance, size: int, coordinate_major: bool):
    """(outcomes, particle-steps spent in the first tier) of a run from ``start`` (one device,
    FIRST_TIER_SLOTS slots, one loop) stopped after ``budget`` particle-steps; a run still
    drawing on its queue then goes on in ``size`` slots with ``advance`` (the full program),
    and counts as having spent the whole allowance."""
    _, dynamic, _, x0, n_steps = args
    tier = _advance_fn(None, *options, (), budgeted=True, coordinate_major=coordinate_major)
    state, outcomes = start
    per_block = state.walk.ids.shape[0] * options[1] * plan(exit_spec(dynamic, options[0]))[0]
    (walk, q_next), outcomes = tier(*args, state, outcomes, np.int32(max(1, budget // per_block)))
    running = np.sum(np.asarray(walk.status) == RUNNING, dtype=np.int32)
    state = state._replace(walk=walk, q_next=q_next, n_running=running[None])
    if running and int(q_next[0]) < int(state.q_end[0]):  # a long run: the full program pays
        return advance(*args, _widen(state, x0, size), outcomes)[1], FIRST_TIER_WORK
    if running:  # stragglers only: the small array is the one for them
        outcomes = tier(*args, state, outcomes, np.int32(np.iinfo(np.int32).max))[1]
    status, steps = np.asarray(outcomes[0]), np.asarray(outcomes[1])
    return outcomes, int(np.sum(np.where(status == RUNNING, n_steps, steps), dtype=np.int64))


def run_exits(key, dynamic, region, x0, first: int, n: int, t_max, *, correction=None,
              mesh: Mesh | None = None, n_slots: int | None = None,
              ticks_per_block: int = 32, min_bucket: int | None = None, divergence_bound=1e8,
              pack: bool = True, first_tier: bool = True) -> ExitRecord:
    """Exit records (numpy) of particles ``first`` .. ``first + n - 1``; see the module doc.
    ``pack=False`` puts every particle in a slot and never packs the stragglers;
    ``min_bucket`` None: ``default_min_bucket``; ``first_tier=False`` starts on the full
    array (a caller about to run the same shape many times: one compilation serves them)."""
    check_options(n_slots, min_bucket)
    check_bound(divergence_bound, x0)
    dtype = jnp.zeros(()).dtype
    x0 = np.asarray(x0, dtype)
    # the step count is computed once, here, and handed to the kernel as an integer
    n_steps = int(max_steps(np.asarray(dynamic.dt), np.asarray(t_max, dtype), xp=np))
    if min_bucket is None:
        min_bucket = default_min_bucket(n_steps)
    lay = _Layout(mesh)
    n_dev = lay.n_dev
    slots = (n_slots or default_slots()) if pack else n
    per_dev = padded(min(-(-n // n_dev), -(-slots // n_dev)))  # slots per device (ALIGN)
    on_cpu = jax.default_backend() == "cpu"
    # on an accelerator a step over fewer slots costs no less (it is bound by launches, not
    # arithmetic): there the stragglers are packed once, as every extra size costs a compile
    pack_into = pack_sizes(per_dev, min_bucket, None if on_cpu else 1) if pack else ()
    options = (correction, _checks.positive_int("ticks_per_block", ticks_per_block),
               float(divergence_bound))
    coordinate_major = _BlockLayout.of(dynamic).coordinate_major
    advance = _advance_fn(mesh, *options, pack_into, coordinate_major=coordinate_major)
    args = (key, dynamic, region, x0, np.int32(n_steps))

    small = padded(min(n, FIRST_TIER_SLOTS))
    # the full program's compiled shape, as jit's cache tells it apart
    shape = (options, pack_into, per_dev, x0.shape, jax.tree.structure((dynamic, region)))
    spent = _FIRST_TIER_SPENT.get(shape, 0)
    # a run whose stragglers would be packed below MIN_BUCKET (a long one) skips the tier,
    # which finishes its stragglers in its own array
    if (first_tier and on_cpu and mesh is None and n_slots is None and pack_into
            and min(pack_into) >= MIN_BUCKET and spent < FIRST_TIER_WORK):
        outcomes, work = _first_tier(args, options, _fresh_state(lay, x0, first, n, small),
                                     FIRST_TIER_WORK - spent, advance, per_dev,
                                     coordinate_major)
        _FIRST_TIER_SPENT[shape] = spent + work
    else:
        _, outcomes = advance(*args, *_fresh_state(lay, x0, first, n, per_dev))
    status = lay.get(outcomes[0])[:n]
    if np.any(status == PAD):  # every particle hands its outcome over; never silently censored
        raise RuntimeError(f"the exit engine returned no outcome for {np.sum(status == PAD)} of "
                           f"{n} particles (a bug in sgdyn: please report it)")
    record = exit_record(dynamic, status, lay.get(outcomes[1])[:n], n_steps, xp=np)
    return record._replace(t_max=float(record.t_max))
