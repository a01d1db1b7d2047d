r"""The ensemble engine: many independent particles of one dynamic, stepped in lockstep.

Two pure, jittable kernels (no hidden jit or vmap over parameters; vmap them over a stacked
dynamic for a sweep):

- ``simulate_exits``: steps until every particle has left the region or t_max is reached,
  recording each particle's first exit time on the fly (no trajectories are stored). The loop
  is a ``lax.while_loop`` (to stop early) over blocks of a fixed-length ``lax.scan``.
- ``simulate_samples``: runs a burn-in and records the ensemble every ``thin`` steps.

``advance_exits`` is the loop behind ``simulate_exits``: after every block each particle that
stopped hands its outcome to a queue, and its slot takes the next particle waiting there, if
any (``sgdyn.runner`` drives it with a queue of waiting particles).

The noise of particle i at its k-th tick is drawn from its own counter-based stream
(``sgdyn.rng``), indexed by its global id and its age k, never by its slot or by the wall
clock; running particles in chunks, refilled slots, on several devices, or all at once gives
bit-identical per-particle results, as long as the dynamic sums over a particle's coordinates
in a fixed order (``sgdyn.ordered``: the built-in landscapes, noises, problems and regions
do). Times are in t = k * lr units (k steps of size dt).

Particles whose state becomes NaN/inf or leaves the box |x_j| < divergence_bound are *diverged*:
counted apart, neither escaped nor censored (an exit run records the step at which they
diverged, a sample run makes their state NaN from then on).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .ordered import pairwise
from .regions import check_correction, exited
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
    start, or nothing (PAD). Ages are per slot, so a slot can be refilled mid-run."""

    x: jax.Array  # (N, d)
    status: jax.Array  # (N,) int8: RUNNING or PAD (an empty slot)
    age: jax.Array  # (N,) int32 ticks since the particle started
    ids: jax.Array  # (N,) uint32 global particle index (selects the noise stream)


class _Queue(NamedTuple):
    """Particles waiting for a slot, ``next`` to ``end`` - 1, and the outcome of those that
    have left their slot, indexed by particle id - ``first`` (PAD: no outcome yet)."""

    next: jax.Array  # () uint32
    end: jax.Array  # () uint32
    first: jax.Array  # () uint32
    status: jax.Array  # (M,) int8: ESCAPED, DIVERGED or RUNNING (censored at max_steps)
    exit_step: jax.Array  # (M,) int32, steps until the exit (0 if censored)


def exit_spec(dynamic, correction) -> NoiseSpec:
    """What one step of an exit run consumes: the dynamic's noise, plus a uniform for the
    Brownian-bridge test."""
    bridge = (("uniform", 1),) if correction == "bridge" else ()
    return NoiseSpec(dynamic.noise_spec.parts + bridge)


# From how many coordinates a block of ticks is coordinate-major, per backend (see _Layout);
# a backend not named (unmeasured: a TPU) takes the CPU's.
COORDINATE_MAJOR_DIM = {"cpu": 8, "gpu": 3}


def coordinate_major_dim(backend: str | None = None) -> int:
    """The number of coordinates from which the engine holds a block's states as (d, N) on
    ``backend`` ("cpu", "gpu", "cuda", "rocm", ...; None: the platform of JAX's default
    device, ``jax.default_device`` if set, else the default backend's). The layout is chosen
    when a kernel is traced, from that default: a mesh over another platform's devices runs in
    the default's layout (the same numbers, at that layout's speed)."""
    if backend is None:
        device = jax.config.jax_default_device
        backend = (device if isinstance(device, str) else getattr(device, "platform", None)
                   or jax.default_backend())
    backend = {"cuda": "gpu", "rocm": "gpu"}.get(backend, backend)
    return COORDINATE_MAJOR_DIM.get(backend, COORDINATE_MAJOR_DIM["cpu"])


class _Layout(NamedTuple):
    """How a block of ticks holds the states: particle-major, x (N, d), the walk's own layout,
    or coordinate-major, x (d, N), from ``coordinate_major_dim()`` coordinates on, for dynamics
    that draw no random words (minibatch SGD draws its batch's indices as words and gathers
    its examples per particle: as (d, N) that ran 2-4x slower in 32-64 dimensions).

    Coordinate-major, coordinate j of every particle is one contiguous row, like the random
    words (``rng.threefry_words``), so a step reads its noise without a transpose and a sum
    over coordinates (``sgdyn.ordered``) adds whole rows (``benchmarks/layout_probe.py``):
    - on a CPU, from 8 coordinates: the 100-D PLD tick ran 1.5x faster, 8-32-D Gaussian
      samples 1.5-3.8x and exit runs 2.1-5.3x. Below 8 neither layout wins throughout, and 1-D
      runs (minibatch SGD among them) ran up to 3.7x slower as (1, N);
    - on a GPU (an H200), from 3 coordinates: 3-32-D samples 1.2-2.5x faster, exit runs
      0.97-1.31x. 2-D three-point samples ran 0.86x and 1-D runs 0.59-0.97x.
    One threshold per backend, not one tuned per machine, so that a run gives the same numbers
    on every CPU, and on every GPU (the two layouts contract multiply-adds differently, so they
    differ in the last bits). A GPU and a CPU compile the arithmetic differently anyway: the
    benchmark's 1-D mean exit times agreed to 2e-8, not exactly.

    The walk stays (N, d); the transposes happen once per block.
    """

    coordinate_major: bool

    @staticmethod
    def of(dynamic) -> "_Layout":
        words = any(kind == "word" for kind, _ in dynamic.noise_spec.parts)
        return _Layout(dynamic.dim >= coordinate_major_dim() and not words)

    def inside(self, x):  # (N, d) -> the layout's
        return x.T if self.coordinate_major else x

    outside = inside  # and back: a transpose either way

    def first(self, x):  # the first coordinate of every particle, (N,)
        return x[0] if self.coordinate_major else x[:, 0]

    def spread(self, v):  # (N,) -> broadcastable against a state
        return v[None, :] if self.coordinate_major else v[:, None]

    def values(self, v):  # a step's random values, (count, N) from rng.take
        return v if self.coordinate_major else v.T

    def per_particle(self, fn, params, *states):
        """fn(params, *one_particle's_states) for every particle: jax.vmap over the
        particles' axis of ``states`` (in this layout, as is a result with coordinates),
        ``params`` shared.

        Coordinate-major, the vector leaves of ``params`` as long as a state (a minimum, a
        centre) go in batched too, broadcast along the particles, which XLA fuses away: vmap
        moves the batch axis to the front wherever a batched operand meets an unbatched
        non-scalar one, so ``x - center`` was a transposed (N, d) copy of the state, which an
        exit test wrote out pass by pass (64-D and 100-D exit runs 2.9-4x slower than with the
        leaves batched). A per-particle scalar against a vector (a noise's scale times the
        normals) still moves the axis. Matrices stay shared: broadcast, one that XLA wrote out
        would be d^2 N. A batched leaf is a tracer even in an eager call: a step that reads a
        parameter as a concrete value (``np.asarray``) fails here, as it does under jit."""
        if not self.coordinate_major:
            return jax.vmap(fn, in_axes=(None,) + (0,) * len(states))(params, *states)
        d, n = states[0].shape
        leaves, tree = jax.tree_util.tree_flatten(params)
        spread = [jnp.ndim(v) == 1 and jnp.shape(v)[0] == d for v in leaves]
        leaves = [jnp.broadcast_to(jnp.asarray(v)[:, None], (d, n)) if s else v
                  for v, s in zip(leaves, spread)]
        axes = jax.tree_util.tree_unflatten(tree, [1 if s else None for s in spread])
        return jax.vmap(fn, in_axes=(axes,) + (1,) * len(states), out_axes=-1)(
            jax.tree_util.tree_unflatten(tree, leaves), *states)

    def diverged(self, x, bound):
        """Per particle: NaN, inf or a coordinate past bound (NaN <= bound is False). Or-ed
        pairwise over rows when coordinate-major: XLA's reduction over a few rows ran a
        10-D tick at half the speed of an 8-D one on a CPU."""
        ok = jnp.abs(x) <= bound
        if self.coordinate_major:
            return ~pairwise(ok, jnp.logical_and, axis=0)
        return ~jnp.all(ok, axis=1)


def _tick(key, dynamic, x, ids, age, spec: NoiseSpec, visit, layout: _Layout,
          share_words: bool = True):
    """Advance every particle through one tick (the steps one Threefry call per particle feeds).

    ``x`` are the states in ``layout``, ``ids`` the particles' streams, ``age`` their tick
    counters (one per particle or one for all). ``visit(x_old, x_new, extra, substep) -> x``
    folds one step into the state. ``share_words``: compute the tick's random words once, into
    a buffer every step reads; left to itself XLA may fuse Threefry into each step that reads
    a word, recomputing all 20 rounds per step, when the steps land in separate passes.
    """
    steps, calls = rng.plan(spec)
    words = rng.threefry_words(key, ids, age, calls)
    if share_words:
        words = jax.lax.optimization_barrier(words)
    n_dyn = len(dynamic.noise_spec.parts)

    def substep(s, x):
        noise = tuple(layout.values(v) for v in rng.take(words, s, spec))
        x_new = layout.per_particle(lambda dyn, x, xi: dyn.step(x, xi), dynamic, x,
                                    noise[:n_dyn])
        return visit(x, x_new, noise[n_dyn:], s)

    if steps <= 4:  # Gaussian or three-point increments: unroll the (at most four) steps
        for s in range(steps):
            x = substep(s, x)
        return x
    # bit-packed increments: up to 64 steps per tick, in a loop to keep compiles small
    return jax.lax.fori_loop(0, steps, substep, x)


def _starts(dynamic, x0, n: int):
    """n copies of the start x0, shape (n, d), in the engine's float type."""
    return jnp.broadcast_to(jnp.asarray(x0, jnp.zeros(()).dtype), (n, dynamic.dim))


# XLA's CPU code for a pass over the particles runs 5-8x slower per particle when their count
# is odd (measured on this project's CPU, every kernel: 4095 slots 1.4e8 particle-steps/s
# against 1.1e9 for 4096) and up to 2x slower for some even counts; multiples of 64 were all
# fast. So the kernels pad their particle arrays to a multiple of ALIGN.
ALIGN = 64


def padded(n: int, align: int = ALIGN) -> int:
    """n rounded up to a multiple of ``align``."""
    return -(-int(n) // align) * align


def init_walk(dynamic, x0, ids, n_slots: int | None = None) -> _Walk:
    """One slot per entry of ``ids``, each particle at x0, running, age 0; with ``n_slots``
    (>= len(ids)) the slots after them are empty (PAD)."""
    n = ids.shape[0]
    size = n if n_slots is None else n_slots
    status = jnp.where(jnp.arange(size) < n, RUNNING, PAD).astype(jnp.int8)
    ids = jnp.pad(jnp.asarray(ids, jnp.uint32), (0, size - n))
    return _Walk(_starts(dynamic, x0, size), status, jnp.zeros(size, jnp.int32), ids)


def empty_queue(first, n: int) -> _Queue:
    """A queue for particles first .. first + n - 1, all of them already in slots (none
    waiting), and their outcomes."""
    first = jnp.asarray(first, jnp.uint32)
    end = first + jnp.uint32(n)
    return _Queue(end, end, first, jnp.full(n, PAD, jnp.int8), jnp.zeros(n, jnp.int32))


MAX_STEPS = 2**30 - 1  # int32 step counts, with room for one block of at most 2^30 steps


def max_steps(dt, t_max, xp=jnp):
    """Steps before a run is censored: ceil(t_max / dt) in the float type of dt and t_max, a
    ratio a few rounding errors (at most 1e-3 steps) above an integer counting as that integer
    (float32 0.18 / 0.02 is 9.0000005: 9 steps, not 10). Computed once per run and handed to
    the kernel as an integer, so the host and the kernel never disagree on when a run ends.
    At most 2^30 - 1: step counts are int32 and a block may run 2^30 steps past the end (the
    record's t_max says where a longer run was cut; ``measure_exit_times`` refuses one)."""
    ratio = xp.asarray(t_max) / xp.asarray(dt)
    slack = xp.minimum(4 * xp.finfo(ratio.dtype).eps * ratio, 1e-3)
    return xp.minimum(xp.ceil(ratio - slack), MAX_STEPS).astype(xp.int32)


def _count_before(mask):
    """(how many entries of the boolean vector ``mask`` are True before each position, how
    many are True in all), int32.

    jnp.cumsum lowers to a tree of reduce-windows: on a CPU 9 kernels to compile (~0.1 s) and
    200 us for 16384 entries; a sequential scan is 2 kernels and runs in about half the time.
    Elsewhere (thousands of launches for a scan) cumsum keeps its parallel lowering.
    """
    return jax.lax.platform_dependent(mask.astype(jnp.int32), cpu=_count_sequential,
                                      default=_count_parallel)


def _count_sequential(counts):
    total, before = jax.lax.scan(lambda total, c: (total + c, total), jnp.int32(0), counts)
    return before, total


def _count_parallel(counts):
    inclusive = jnp.cumsum(counts, dtype=jnp.int32)  # int32 under x64 too (the scan's)
    return inclusive - counts, jnp.sum(counts, dtype=jnp.int32)


def _pack(walk: _Walk, size: int) -> tuple[_Walk, jax.Array]:
    """A walk of ``size`` slots holding the running slots of ``walk`` in order (there are at
    most ``size``), the rest empty; and how many there are."""
    # where each running slot goes; the slots it fills gather from there (jnp.nonzero would
    # do, but compiles to 18 kernels on a CPU where this is 3)
    live = walk.status == RUNNING
    before, n_live = _count_before(live)
    dest = jnp.where(live, before, size)  # out of range: dropped
    src = jnp.zeros(size, jnp.int32).at[dest].set(jnp.arange(live.shape[0], dtype=jnp.int32),
                                                  mode="drop")
    head = jax.tree.map(lambda a: a[src], walk)
    status = jnp.where(jnp.arange(size) < n_live, head.status, PAD).astype(jnp.int8)
    return head._replace(status=status), n_live


# A tick's only output is the state x: XLA then fuses all of a tick's steps into one pass over
# the slots, where separate status and exit-step outputs split it into several passes that
# each redo the steps (2-4x slower on a CPU). So a particle that leaves during a block is
# marked in x itself, by a NaN whose payload (mantissa bits, which selects and copies keep;
# no arithmetic ever touches it) says at which step of the block it left and whether it
# diverged; ``_hand_over`` turns the marks into outcomes once per block.
_QUIET_NAN = {4: (jnp.uint32, 0x7FC00000), 8: (jnp.uint64, 0x7FF8000000000000)}
_PAYLOAD_BITS = {4: 22, 8: 31}  # float32 has 22 free mantissa bits; payloads are int32


def _outcome_nan(payload, dtype):
    """A quiet NaN carrying the non-negative integer ``payload``."""
    uint, nan = _QUIET_NAN[jnp.dtype(dtype).itemsize]
    return jax.lax.bitcast_convert_type(uint(nan) | payload.astype(uint), dtype)


def _outcome_payload(x):
    """The payload of NaNs made by ``_outcome_nan`` (garbage for other values)."""
    uint, _ = _QUIET_NAN[x.dtype.itemsize]
    mask = uint((1 << _PAYLOAD_BITS[x.dtype.itemsize]) - 1)
    return (jax.lax.bitcast_convert_type(x, uint) & mask).astype(jnp.int32)


def _check_block(ticks_per_block, steps_per_tick: int, dtype) -> None:
    limit = 2 ** _PAYLOAD_BITS[jnp.dtype(dtype).itemsize] // (2 * steps_per_tick)
    if not 1 <= int(ticks_per_block) <= limit:
        raise ValueError(f"ticks_per_block must be an integer in [1, {limit}], "
                         f"got {ticks_per_block!r}")


def _hand_over(walk: _Walk, queue: _Queue, n_running, x, steps_per_tick: int, ticks: int,
               max_steps, x0, refill: bool) -> tuple[_Walk, _Queue, jax.Array]:
    """The walk and queue after a block that left the ``n_running`` running slots at ``x``:
    every particle that left (a NaN mark, see _outcome_nan) or reached ``max_steps``
    (censored) hands its outcome to the queue, and its slot takes the next waiting particle
    (``refill``; started at x0) or is left empty. Also returns how many slots still run."""
    running = walk.status == RUNNING
    marked = running & jnp.isnan(x[:, 0])
    payload = _outcome_payload(x[:, 0])
    age = walk.age + ticks
    done = marked | (running & (age * steps_per_tick >= max_steps))
    slot = jnp.where(done, walk.ids - queue.first, queue.status.shape[0])  # out of range: dropped
    status = jnp.where(marked, jnp.where(payload % 2 == 1, DIVERGED, ESCAPED), RUNNING)
    exit_step = jnp.where(marked, walk.age * steps_per_tick + payload // 2 + 1, 0)
    queue = queue._replace(status=queue.status.at[slot].set(status.astype(jnp.int8), mode="drop"),
                           exit_step=queue.exit_step.at[slot].set(exit_step, mode="drop"))
    if not refill:  # nobody waits: a finished particle's slot is left empty
        # counted from the slots, not carried: a packing that lost a particle ends the loop
        # (and the runner reports the missing outcome) instead of looping forever
        still = running & ~done
        return (walk._replace(x=x, status=jnp.where(still, RUNNING, PAD).astype(jnp.int8),
                              age=age), queue, jnp.sum(still, dtype=jnp.int32))
    before, n_done = _count_before(done)
    waiting = queue.end - queue.next
    swap = done & (before.astype(jnp.uint32) < waiting)
    n_new = jnp.minimum(n_done.astype(jnp.uint32), waiting)
    walk = _Walk(x=jnp.where(swap[:, None], x0, x),
                 status=jnp.where(swap | (running & ~done), RUNNING, PAD).astype(jnp.int8),
                 age=jnp.where(swap, 0, age),
                 ids=jnp.where(swap, queue.next + before.astype(jnp.uint32), walk.ids))
    n_running = n_running - n_done + n_new.astype(jnp.int32)
    return walk, queue._replace(next=queue.next + n_new), n_running


def advance_exits(key, dynamic, region, walk: _Walk, max_steps, queue: _Queue, *, x0=None,
                  pack_into: tuple[int, ...] = (), n_running=None, max_blocks=None,
                  correction=None, ticks_per_block: int = 32,
                  divergence_bound=1e8) -> tuple[_Walk, _Queue]:
    """Step the slots of ``walk`` until no particle runs (a particle still inside after
    ``max_steps`` steps stops there: censored); every particle that stops hands its outcome
    to ``queue``. ``n_running``: how many slots hold a running particle (None: all particles
    taken from the queue, ``queue.first`` .. ``queue.next`` - 1, are in slots and none has
    finished, as at a fresh start); the other slots are empty.

    ``max_blocks`` (no packing only): stop after that many blocks even if particles still
    run, and return the walk and queue as they stand; advancing them again continues the
    run exactly where it stopped (``sgdyn.runner`` moves a long run to a bigger array so).

    After every block of ``ticks_per_block`` ticks each finished slot takes the next particle
    waiting in the queue (started at ``x0``; None if nobody waits), so the array stays full
    until the queue is empty. With ``pack_into`` (a decreasing tuple of static slot counts),
    once the queue is empty and at most ``pack_into[0]`` particles still run, they are packed
    into an array of that many slots (the walk returned) and go on there, and so on down the
    tuple: the stragglers cost what they need, in the same compiled program (one loop per
    array size). A particle's noise and exit step depend only on its id and age, never on its
    slot.
    """
    spec = exit_spec(dynamic, correction)
    steps_per_tick = rng.plan(spec)[0]
    _check_block(ticks_per_block, steps_per_tick, walk.x.dtype)
    layout = _Layout.of(dynamic)

    def ticks(w: _Walk):
        running = w.status == RUNNING
        # finished and empty slots are NaN: they take no part (see _outcome_nan); a running
        # particle is NaN here only if it started so (x0 NaN): it diverges at its first step
        started_nan = _outcome_nan(jnp.int32(1), w.x.dtype)
        x = jnp.where(running[:, None], jnp.where(jnp.isnan(w.x), started_nan, w.x), jnp.nan)
        x = layout.inside(x)

        def body(carry, _):
            x, t = carry  # t: the tick within the block, a scalar carried (not scanned over:
            # reading it from an array made XLA index it per element, unvectorised)

            def visit(x_old, x_new, extra, s):
                live = (~jnp.isnan(layout.first(x_old))
                        & ((w.age + t) * steps_per_tick + s < max_steps))
                bad = layout.diverged(x_new, divergence_bound)
                uniform = extra[0] if extra else layout.spread(jnp.zeros(w.ids.shape[0]))
                out = layout.per_particle(
                    lambda p, a, b, u: exited(*p, a, b, u[0], correction),
                    (region, dynamic), x_old, x_new, uniform)
                code = _outcome_nan((t * steps_per_tick + s) * 2 + bad, x_new.dtype)
                return jnp.where(layout.spread(live & (bad | out)), layout.spread(code),
                                 jnp.where(layout.spread(live), x_new, x_old))

            x = _tick(key, dynamic, x, w.ids, w.age + t, spec, visit, layout)
            return (x, t + 1), None

        x = jax.lax.scan(body, (x, jnp.int32(0)), None, length=ticks_per_block)[0][0]
        return layout.outside(x)

    def loop(walk, queue, n_running, stop_below: int, refill: bool):
        """Blocks until no slot runs, or the queue is empty and at most stop_below run (or
        max_blocks have run)."""

        def block(state):
            w, q, n, *count = state
            return (*_hand_over(w, q, n, ticks(w), steps_per_tick, ticks_per_block, max_steps,
                                x0, refill), *(c + 1 for c in count))

        def keep_going(state):
            _, q, n, *count = state
            go = (n > 0) & ((q.next < q.end) | (n > stop_below))
            return go & (count[0] < max_blocks) if count else go

        count = () if max_blocks is None else (jnp.int32(0),)
        return jax.lax.while_loop(keep_going, block, (walk, queue, n_running, *count))[:3]

    # one loop per array size in one program: the full array while the queue lasts and more
    # than pack_into[0] particles run, then the packed stragglers alone (the same steps on a
    # smaller array; nobody waits any more, so no refill), and so on
    if max_blocks is not None and pack_into:
        raise ValueError("max_blocks needs pack_into=(): a loop cut short may hold more "
                         "particles than the array they would be packed into")
    if n_running is None:
        n_running = queue.next - queue.first  # all in slots, none finished
    n_running = jnp.asarray(n_running).astype(jnp.int32)
    refill = x0 is not None
    for size in pack_into:
        if size >= walk.ids.shape[0]:
            continue  # no smaller than the array in hand: nothing to pack
        walk, queue, _ = loop(walk, queue, n_running, size, refill)
        walk, n_running = _pack(walk, size)
        refill = False
    walk, queue, _ = loop(walk, queue, n_running, 0, refill)
    return walk, queue


def exit_record(dynamic, status, exit_step, max_steps, xp=jnp) -> ExitRecord:
    """Per-particle exit times (or censoring times, after ``max_steps`` steps) from final
    statuses and exit steps (``xp=numpy`` on the host: the same numbers, no compilation)."""
    dt = xp.asarray(dynamic.dt)
    t_cens = xp.asarray(max_steps).astype(dt.dtype) * dt
    censored = status == RUNNING
    time = xp.where(censored, t_cens, xp.asarray(exit_step).astype(dt.dtype) * dt)
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
    check_correction(correction, dynamic)
    return exits_unchecked(key, dynamic, region, x0, n_particles, t_max, correction=correction,
                           first_particle=first_particle, ticks_per_block=ticks_per_block,
                           divergence_bound=divergence_bound)


def exits_unchecked(key, dynamic, region, x0, n_particles: int, t_max, *, correction=None,
                    first_particle=0, ticks_per_block: int = 32, divergence_bound=1e8):
    """``simulate_exits`` for a caller that has checked the correction already (a sweep checks
    each member once, before the vmapped run)."""
    ids = first_particle + jnp.arange(n_particles, dtype=jnp.uint32)
    n_steps = max_steps(dynamic.dt, t_max)
    walk = init_walk(dynamic, x0, ids, padded(n_particles))  # see ALIGN
    _, done = advance_exits(key, dynamic, region, walk, n_steps,
                            empty_queue(first_particle, n_particles), correction=correction,
                            ticks_per_block=ticks_per_block, divergence_bound=divergence_bound)
    return exit_record(dynamic, done.status, done.exit_step, n_steps)


class SampleRecord(NamedTuple):
    """What ``simulate_samples`` returns: the samples (NaN from where a particle diverged),
    the diverged mask, and the burn-in and thinning in steps as run (rounded up to ticks)."""

    x: jax.Array  # (n_samples, N, d)
    diverged: jax.Array  # (N,) bool
    thin_steps: int  # steps between samples actually used
    burn_in_steps: int


def simulate_samples(key, dynamic, x0, n_particles: int, burn_in: int, n_samples: int,
                     thin: int = 1, *, first_particle=0, divergence_bound=1e8):
    """States of the ensemble at steps burn_in + thin, burn_in + 2 thin, ..., burn_in +
    n_samples * thin.

    Steps are grouped in ticks (``sgdyn.rng.plan``); ``burn_in`` and ``thin`` are rounded up to
    whole ticks and the values used are returned. Memory: n_samples * n_particles * d numbers.
    A particle that reaches NaN/inf or |x_j| > divergence_bound within a tick is flagged
    ``diverged`` and every sample it has from then on is NaN (a frozen finite state would bias
    any statistic that forgot the flag; NaN cannot go unnoticed).
    """
    spec = dynamic.noise_spec
    g = rng.plan(spec)[0]
    burn_ticks, thin_ticks = -(-burn_in // g), max(1, -(-thin // g))
    # padded (see ALIGN): the extra particles run their own streams and are dropped at the end
    size = padded(n_particles)
    ids = first_particle + jnp.arange(size, dtype=jnp.uint32)
    layout = _Layout.of(dynamic)

    def advance(state, n_ticks):
        # as in an exit run (see _outcome_nan), the state is a tick's only output, so the
        # whole tick fuses into one pass; the words need no buffer then (faster without).
        # Coordinate-major, a coordinate that diverges turns NaN and stays so, coordinate by
        # coordinate (its particle's whole sample turns NaN at the end): a check per particle
        # there (a reduction over rows every tick) made XLA recompute the step in a second
        # pass, up to 2.5x slower. Particle-major it is the other way round (5-7x slower
        # coordinate by coordinate, in 2-8 dimensions).
        def body(state, _):
            x, age = state
            new = _tick(key, dynamic, x, ids, age, spec, lambda x_old, x_new, extra, s: x_new,
                        layout, share_words=False)
            if layout.coordinate_major:
                bad = jnp.isnan(x) | ~(jnp.abs(new) <= divergence_bound)
            else:
                bad = layout.spread(layout.diverged(new, divergence_bound)
                                    | jnp.isnan(layout.first(x)))
            return (jnp.where(bad, jnp.nan, new), age + 1), None

        return jax.lax.scan(body, state, None, length=n_ticks)[0]

    # every particle has the same age here: one counter instead of an array
    state = (layout.inside(_starts(dynamic, x0, size)), jnp.int32(0))
    state = advance(state, burn_ticks) if burn_ticks else state

    def sample(state, _):
        state = advance(state, thin_ticks)
        return state, layout.outside(state[0])[:n_particles]

    (x, _), xs = jax.lax.scan(sample, state, None, length=n_samples)
    bad = jnp.any(jnp.isnan(xs), axis=-1)  # (n_samples, n): a coordinate diverged by then
    # from the final state, which exists with no sample too
    diverged = jnp.any(jnp.isnan(layout.outside(x)[:n_particles]), axis=-1)
    return SampleRecord(jnp.where(bad[..., None], jnp.nan, xs), diverged, thin_ticks * g,
                        burn_ticks * g)
