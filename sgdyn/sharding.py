r"""Exit-time ensembles with the particle axis split over every device JAX sees.

The noise of particle i at tick j is Threefry(key, (i, j)) (``sgdyn.rng``): a pure function of
the key, the particle's *global* index and the tick. So a particle computes the same numbers on
whichever device it lives, and a sharded run is bit-identical to a one-device run.

``measure_exit_times_sharded`` is ``measure_exit_times`` (its arguments but ``chunk_size`` and
``checkpoint``, plus ``mesh``; the same ``ExitResult``, the same numbers) with the ensemble
split over a 1-D device mesh with ``jax.shard_map``:

- each device owns a contiguous range of particle ids: its own queue, its own slots (refilled
  as particles leave) and its own ``lax.while_loop``, with no cross-device communication;
- once its queue is empty and few of its particles run, each device packs its own stragglers
  into a smaller array, exactly as ``sgdyn.measure_exit_times`` does (the same
  ``sgdyn.runner.run_exits``); the whole run is one sharded call.

``simulate_exits_sharded`` steps every particle in its own slot (no queue, no packing), like
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
3. Call ``measure_exit_times_sharded`` on every process. The run is one sharded call with no
   communication until its end, when the outcomes are gathered to every host
   (``multihost_utils.process_allgather``, a few bytes per particle): every process returns
   the full record.
4. Only process 0 should write files (``if jax.process_index() == 0: ...``).

Throughput scales with the device count while each device holds enough slots to fill it
(``n_slots`` in all). Devices do not rebalance: one whose stragglers are slow finishes last,
about ln(slots per device) mean exit times after its queue empties, like a single device.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from .ensemble import ExitRecord
from .measure import ExitResult, _validate, result
from .regions import check_start
from .runner import AXIS, run_exits


def particle_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"particles"`` over ``devices`` (default: every device JAX sees)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def measure_exit_times_sharded(key, dynamic, region, x0, n_particles: int, t_max, *,
                               correction=None, mesh: Mesh | None = None,
                               confidence: float = 0.95, ticks_per_block: int = 32,
                               min_bucket: int | None = None, n_slots: int | None = None,
                               divergence_bound=1e8) -> ExitResult:
    """``sgdyn.measure_exit_times`` with the particles split over ``mesh`` (default: all
    devices), each device refilling and packing its own slots.

    The record is bit-identical to the one-device ``measure_exit_times`` with the same key.
    """
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, None,
                                confidence)
    check_start(region, x0)
    mesh = particle_mesh() if mesh is None else mesh
    return result(run_exits(key, dynamic, region, x0, 0, n_particles, t_max,
                            correction=correction, mesh=mesh, n_slots=n_slots,
                            ticks_per_block=ticks_per_block, min_bucket=min_bucket,
                            divergence_bound=divergence_bound), dynamic, confidence)


def simulate_exits_sharded(key, dynamic, region, x0, n_particles: int, t_max, *,
                           correction=None, mesh: Mesh | None = None, ticks_per_block: int = 32,
                           divergence_bound=1e8) -> ExitRecord:
    """``sgdyn.simulate_exits`` split over ``mesh``: one sharded call, no packing; each
    device runs until its own particles are done or t_max. Returns numpy arrays."""
    n_particles, x0 = _validate(dynamic, region, x0, n_particles, t_max, correction, None)
    check_start(region, x0)
    mesh = particle_mesh() if mesh is None else mesh
    return run_exits(key, dynamic, region, x0, 0, n_particles, t_max, correction=correction,
                     mesh=mesh, ticks_per_block=ticks_per_block,
                     divergence_bound=divergence_bound, pack=False)
