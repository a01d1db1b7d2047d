r"""The host side of an exit-time run: a queue of particles, a fixed array of slots, compaction.

A run of N particles keeps S <= N slots busy (``n_slots``). Whenever a particle leaves (or
reaches t_max), its slot takes the next particle waiting in the queue, on the device, inside
the jitted loop (``sgdyn.ensemble.advance_exits``): the array stays full and is compiled once.
Escape times are roughly exponential, so once the queue is empty the last particles leave
about ln S mean times after the others; stepping the whole array until then would waste most
of the work. The loop therefore hands back to the host when at most 1/``SHRINK`` of the slots
still run, and the host *compacts*: the running particles are packed into the next power of
two (>= ``min_bucket``) and go on. Each array size compiles once per process; with the
defaults (S = 16384 on a CPU, SHRINK = 8, min_bucket = 2048) that is two sizes. Measured on
2 CPU cores for 80000 three-point PLD particles: 0.15-0.22 s once compiled, 1.4-1.8 s for a
first call; without compaction (min_bucket = S) 0.25 s and 1.1 s, one size less to compile.
Particles keep their ids and ages, so none of this changes a single number.

With a device mesh (``sgdyn.sharding``) every device runs its own queue (a contiguous range of
particle ids) and its own slots in its own while loop; compaction gathers the running
particles of all devices and deals them out evenly again.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _checks
from .ensemble import PAD, RUNNING, ExitRecord, _Queue, _Walk, active, advance_exits, \
    exit_record, exit_spec, max_steps
from .rng import plan

AXIS = "particles"
SHRINK = 8  # compact once at most 1/SHRINK of the slots run (few sizes to compile)
MIN_BUCKET = 2048  # smallest array the stragglers are compacted into


def default_slots() -> int:
    """Slots per run: enough to fill the backend, small enough to stay in cache on a CPU."""
    return 2**14 if jax.default_backend() == "cpu" else 2**20


def to_numpy(record) -> ExitRecord:
    """An ExitRecord (possibly on device) as numpy arrays and a float t_max."""
    return ExitRecord(*(np.asarray(getattr(record, f)) for f in ExitRecord._fields[:-1]),
                      float(record.t_max))


def compacted_size(n_running: int, min_bucket: int, multiple: int = 1) -> int:
    """The next power of two >= n_running (and >= min_bucket), rounded up to ``multiple``."""
    size = max(min_bucket, 1 << int(max(n_running, 1) - 1).bit_length())
    return -(-size // multiple) * multiple


def run_limits(dynamic, t_max, correction) -> tuple[int, int]:
    """(steps per tick, total steps before censoring) of an exit run, as host integers; the
    kernel is handed the latter, so the host and the kernel agree on when a run ends."""
    dtype = jnp.zeros(()).dtype
    return (plan(exit_spec(dynamic, correction))[0],
            int(max_steps(np.asarray(dynamic.dt), np.asarray(t_max, dtype), xp=np)))


class _Layout:
    """Where the slot arrays live: one device (``mesh`` None) or split over a 1-D mesh."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.n_dev = 1 if mesh is None else mesh.devices.size

    def put(self, value):
        value = np.asarray(value)
        if self.mesh is None:
            return jnp.asarray(value)
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    def get(self, x) -> np.ndarray:
        """All of a (possibly split, possibly multi-host) array, on every process."""
        if self.mesh is None or jax.process_count() == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def take(self, tree, idx):
        """Rows ``idx`` of every array in ``tree``, split over the mesh again."""
        return _take_fn(self.mesh)(tree, jnp.asarray(idx, jnp.int32))


@functools.lru_cache(maxsize=16)
def _take_fn(mesh):
    """One jitted gather for a whole pytree (one compilation per size, works multi-host)."""
    def take(tree, idx):
        return jax.tree.map(lambda a: a[idx], tree)

    if mesh is None:
        return jax.jit(take)
    return jax.jit(take, out_shardings=NamedSharding(mesh, P(AXIS)))


@functools.lru_cache(maxsize=64)
def _advance_fn(mesh, correction, ticks_per_block: int, divergence_bound: float):
    """jit(advance_exits) with a queue; over a mesh, one loop per device (shard_map)."""

    def local(key, dynamic, region, x0, n_steps, stop_below, walk, q_next, q_end, q_first,
              out_status, out_step):
        queue = _Queue(q_next[0], q_end[0], q_first[0], out_status, out_step)
        walk, queue = advance_exits(key, dynamic, region, walk, n_steps, queue=queue, x0=x0,
                                    stop_below=stop_below, correction=correction,
                                    ticks_per_block=ticks_per_block,
                                    divergence_bound=divergence_bound)
        return walk, queue.next[None], queue.status, queue.exit_step

    if mesh is not None:
        split, same = P(AXIS), P()
        local = jax.shard_map(local, mesh=mesh, in_specs=(same,) * 6 + (split,) * 6,
                              out_specs=(split,) * 4, check_vma=False)
    return jax.jit(local, donate_argnums=(10, 11))


def check_options(n_slots, min_bucket) -> None:
    """ValueError naming the argument for a bad slot count or compaction floor."""
    _checks.positive_int("min_bucket", min_bucket)
    if n_slots is not None:
        _checks.positive_int("n_slots", n_slots)


def run_exits(key, dynamic, region, x0, first: int, n: int, t_max, *, correction=None,
              mesh: Mesh | None = None, n_slots: int | None = None,
              ticks_per_block: int = 32, min_bucket: int = MIN_BUCKET, divergence_bound=1e8,
              compact: bool = True) -> ExitRecord:
    """Exit records (numpy) of particles ``first`` .. ``first + n - 1``; see the module doc.
    ``compact=False`` puts every particle in a slot and runs one call, no compaction."""
    check_options(n_slots, min_bucket)
    lay = _Layout(mesh)
    n_dev = lay.n_dev
    n_slots = n if not compact else (n_slots or default_slots())
    per_queue = -(-n // n_dev)  # particle ids each device's queue covers
    per_dev = min(per_queue, -(-n_slots // n_dev))  # slots per device
    lo = first + np.arange(n_dev, dtype=np.int64) * per_queue
    hi = np.maximum(np.minimum(lo + per_queue, first + n), lo)
    ids = lo[:, None] + np.arange(per_dev)[None, :]
    filled = (ids < hi[:, None]).ravel()
    size = n_dev * per_dev
    dtype = jnp.zeros(()).dtype
    walk = _Walk(lay.put(np.broadcast_to(np.asarray(x0, dtype), (size, dynamic.dim))),
                 lay.put(np.where(filled, RUNNING, PAD).astype(np.int8)),
                 lay.put(np.zeros(size, np.int32)), lay.put(np.zeros(size, np.int32)),
                 lay.put(np.where(filled, ids.ravel(), first).astype(np.uint32)))
    q_next = lay.put(np.minimum(lo + per_dev, hi).astype(np.uint32))
    q_end, q_first = lay.put(hi.astype(np.uint32)), lay.put(lo.astype(np.uint32))
    out_status = lay.put(np.zeros(n_dev * per_queue, np.int8))
    out_step = lay.put(np.zeros(n_dev * per_queue, np.int32))

    advance = _advance_fn(mesh, correction, int(ticks_per_block), float(divergence_bound))
    steps_per_tick, n_steps = run_limits(dynamic, t_max, correction)
    x0_dev, n_steps_dev = jnp.asarray(x0, dtype), jnp.asarray(n_steps, jnp.int32)
    status = exit_step = None
    while True:
        stop_below = 0
        if compact and compacted_size(size // SHRINK, min_bucket, n_dev) < size:
            stop_below = size // SHRINK // n_dev  # per device
        walk, q_next, out_status, out_step = advance(
            key, dynamic, region, x0_dev, n_steps_dev, jnp.asarray(stop_below, jnp.int32), walk,
            q_next, q_end, q_first, out_status, out_step)
        if status is None:  # every queue is empty from the first return on: outcomes are final
            assert np.all(lay.get(q_next) >= lay.get(q_end))
            status = lay.get(out_status)[:n].copy()
            exit_step = lay.get(out_step)[:n].copy()
        st, age = lay.get(walk.status), lay.get(walk.age)
        held = st != PAD
        at = lay.get(walk.ids)[held].astype(np.int64) - first
        status[at], exit_step[at] = st[held], lay.get(walk.exit_step)[held]
        live = active(st, age.astype(np.int64), steps_per_tick, n_steps)
        if not live.any():
            break
        keep = np.flatnonzero(live)
        size = compacted_size(keep.size, min_bucket, n_dev)
        take = np.concatenate([keep, np.full(size - keep.size, keep[0])])
        walk = lay.take(walk, take)._replace(
            status=lay.put(np.where(np.arange(size) < keep.size, RUNNING, PAD).astype(np.int8)))
    return to_numpy(_record(dynamic, jnp.asarray(status), jnp.asarray(exit_step), n_steps_dev))


_record = jax.jit(exit_record)
