r"""Exit-time ensembles with the particle axis split over every device JAX sees.

The noise of particle i at tick j is Threefry(key, (i, j)) (``sgdyn.rng``): a pure function of
the key, the particle's *global* index and the tick. So a particle computes the same numbers on
whichever device it lives, and a sharded run is bit-identical to a one-device run.

``measure_exit_times_sharded`` is ``measure_exit_times`` (same arguments, same ``ExitResult``,
same numbers) with the ensemble split over a 1-D device mesh with ``jax.shard_map``:

- each device steps its own block of particles with the library's ``advance_exits`` and its own
  ``lax.while_loop`` (no cross-device communication inside a segment: a device whose particles
  have all left stops early);
- between segments the host reads the statuses and compacts exactly as
  ``sgdyn.measure_exit_times`` does (``sgdyn.measure.Slots``, power-of-two sizes, here also a
  multiple of the device count): the running particles (with their global indices) are
  gathered and dealt out evenly again over the devices, so the work stays balanced.

``simulate_exits_sharded`` is the one-compiled-call kernel (no compaction), like
``simulate_exits``.

Single host, several accelerators: nothing to do, every device JAX sees is used::

    res = sgdyn.sharding.measure_exit_times_sharded(key, dyn, region, x0, 10**8, t_max)

Testing on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before JAX is
imported) makes the host look like 8 devices.

Several hosts (multi-process, ``jax.distributed``) -- written for it, not tested here (one host):

1. Start one process per host (or per GPU) with the *same* script and arguments, and call,
   before any other JAX call::

       import jax
       jax.distributed.initialize(coordinator_address="host0:1234",
                                  num_processes=N_HOSTS, process_id=THIS_HOST)

   (on Slurm, Cloud TPU or with Open MPI the arguments can be omitted: JAX reads them from
   the environment). ``jax.devices()`` then lists the devices of *all* hosts, and
   ``particle_mesh()`` builds a mesh over all of them.
2. Use the same key on every process (e.g. ``jax.random.key(seed)``): each particle draws its
   noise from (key, global particle index, tick), so no key has to be communicated.
3. Call ``measure_exit_times_sharded`` on every process. Between segments the statuses are
   gathered to every host (``multihost_utils.process_allgather``, a few bytes per particle) so
   all processes take the same compaction decisions; compaction itself is a jitted gather of
   global arrays. Every process returns the full record.
4. Only process 0 should write files (``if jax.process_index() == 0: ...``).

Throughput scales with the device count while each device holds >= ~1e5 particles; the host
round trip between segments is the only synchronisation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .ensemble import RUNNING, ExitRecord, _Walk, advance_exits
from .measure import ExitResult, Slots, _validate, compacted_size, result, run_limits
from .regions import check_start

AXIS = "particles"


def particle_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"particles"`` over ``devices`` (default: every device JAX sees)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def _gather_to_host(x):
    """A global array as a numpy array on every process (all shards, all hosts)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=64)
def _advance_fn(mesh: Mesh, correction, ticks_per_block: int, divergence_bound: float):
    """jit(shard_map(advance_exits)): every device runs its own block, its own while loop."""
    part = P(AXIS)

    def local(key, dynamic, region, x, status, exit_step, tick, ids, t_max, max_ticks):
        walk = _Walk(x, status, exit_step, tick[0])
        walk = advance_exits(key, dynamic, region, walk, ids, t_max, max_ticks,
                             correction=correction, ticks_per_block=ticks_per_block,
                             divergence_bound=divergence_bound)
        return walk.x, walk.status, walk.exit_step, walk.tick[None]

    fn = jax.shard_map(local, mesh=mesh,
                       in_specs=(P(), P(), P(), part, part, part, part, part, P(), P()),
                       out_specs=(part, part, part, part), check_vma=False)
    return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _take_fn(mesh: Mesh):
    """Global gather a[idx] whose result is split over the mesh again (works multi-host)."""
    out = NamedSharding(mesh, P(AXIS))
    return jax.jit(lambda a, idx: a[idx], out_shardings=out)


def _put(mesh, value):
    """Place a host array split along its first axis over the mesh."""
    sharding = NamedSharding(mesh, P(AXIS))
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _run(key, dynamic, region, x0, n_particles, t_max, correction, mesh, ticks_per_block,
         min_bucket, divergence_bound, compact):
    n_dev = mesh.devices.size
    advance = _advance_fn(mesh, correction, int(ticks_per_block), float(divergence_bound))
    take_dev = _take_fn(mesh)
    dtype = jnp.zeros(()).dtype

    size = -(-n_particles // n_dev) * n_dev  # every device holds the same number of slots
    slots = Slots(n_particles, size)
    x = _put(mesh, np.broadcast_to(np.asarray(x0, dtype), (size, dynamic.dim)))
    status = _put(mesh, slots.statuses())
    exit_step = _put(mesh, np.zeros(size, np.int32))
    ids = _put(mesh, np.maximum(slots.slot, 0).astype(np.uint32))

    steps_per_tick, max_steps = run_limits(dynamic, t_max, correction)
    tick, seg_ticks = 0, 64
    t_max_dev = jnp.asarray(t_max, dtype)
    while True:
        ticks = _put(mesh, np.full(n_dev, tick, np.int32))
        budget = seg_ticks if compact else np.iinfo(np.int32).max // 2 - tick
        x, status, exit_step, ticks = advance(key, dynamic, region, x, status, exit_step, ticks,
                                              ids, t_max_dev, jnp.asarray(budget, jnp.int32))
        st = _gather_to_host(status)
        running = st == RUNNING
        # a device stops early only once none of its particles is running, so the running
        # particles all sit at the latest tick
        tick = int(_gather_to_host(ticks).max())
        finished = (not running.any()) or tick * steps_per_tick >= max_steps
        target = compacted_size(int(running.sum()), min_bucket, multiple=n_dev)
        if finished or target < st.shape[0]:
            slots.save(st, _gather_to_host(exit_step))
            if finished:
                break
            idx = jnp.asarray(slots.compact(running, target), jnp.int32)
            x, exit_step, ids = take_dev(x, idx), take_dev(exit_step, idx), take_dev(ids, idx)
            status = _put(mesh, slots.statuses())
        seg_ticks = max(64, tick // 8)
    return slots.record(dynamic, tick, t_max)


def measure_exit_times_sharded(key, dynamic, region, x0, n_particles: int, t_max, *,
                               correction=None, mesh: Mesh | None = None,
                               confidence: float = 0.95, ticks_per_block: int = 32,
                               min_bucket: int = 512, divergence_bound=1e8) -> ExitResult:
    """``sgdyn.measure_exit_times`` with the particles split over ``mesh`` (default: all
    devices), compacting the running particles across devices as they thin out.

    The record is bit-identical to the one-device ``measure_exit_times`` with the same key.
    """
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, None)
    check_start(region, x0)
    mesh = particle_mesh() if mesh is None else mesh
    return result(_run(key, dynamic, region, x0, n_particles, t_max, correction, mesh,
                       ticks_per_block, min_bucket, divergence_bound, compact=True), confidence)


def simulate_exits_sharded(key, dynamic, region, x0, n_particles: int, t_max, *,
                           correction=None, mesh: Mesh | None = None, ticks_per_block: int = 32,
                           divergence_bound=1e8) -> ExitRecord:
    """``sgdyn.simulate_exits`` split over ``mesh``: one sharded call, no compaction; each
    device runs until its own particles are done or t_max. Returns numpy arrays."""
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, None)
    check_start(region, x0)
    mesh = particle_mesh() if mesh is None else mesh
    return _run(key, dynamic, region, x0, n_particles, t_max, correction, mesh, ticks_per_block,
                2048, divergence_bound, compact=False)
