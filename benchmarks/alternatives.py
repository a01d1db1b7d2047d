"""The tools researchers use today, on the same problems (``benchmarks.problems``).

- ``numpy_*``: plain vectorised NumPy Euler-Maruyama (float64, ``Generator.standard_normal``);
  for exit times the arrays shrink to the particles still inside (fancy indexing), the natural
  NumPy idiom.
- ``diffrax_vmap_*``: diffrax as its documentation suggests for an ensemble: one
  ``diffeqsolve`` per particle (Euler, ``ControlTerm`` with a ``VirtualBrownianTree``, the
  documentation's SDE example), ``jax.vmap`` over particle keys, and an ``Event`` that stops a
  particle's solve at its first exit (checked at step ends, as Euler-Maruyama does).
- ``diffrax_ensemble_*``: diffrax at its best: the whole ensemble is one state with diagonal
  noise, fixed steps, ``UnsafeBrownianPath`` (one ``jax.random.normal`` per step). Exit times
  are recorded inside the vector field: a particle that has left is frozen (zero drift and
  noise) and an extra state component tau grows at rate 1 while it is inside, so tau ends as
  its first exit time on the grid; an ``Event`` stops the solve when every particle has left.

Every exit-time function censors at ``t_max`` and returns (time, escaped) arrays, which the
benchmark turns into an estimate with the same censoring-aware estimator for every tool.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------- NumPy


def numpy_steps(problem, n_particles, n_steps, dt, seed=0):
    """Fixed-step Euler-Maruyama of the whole ensemble; returns the final states."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_particles, problem.dim))
    sq = math.sqrt(dt)
    for _ in range(n_steps):
        dw = rng.standard_normal(x.shape)
        x = x + problem.drift(x) * dt + problem.noise(x) * (sq * dw)
    return x


def numpy_exits(problem, n_particles, dt, t_max, seed=0):
    """First exit past ``problem.exit_point`` (checked at grid times), censored at t_max."""
    rng = np.random.default_rng(seed)
    r = problem.exit_point
    max_steps = int(math.ceil(t_max / dt - 1e-9))
    x = np.zeros((n_particles, problem.dim))
    idx = np.arange(n_particles)
    time_ = np.full(n_particles, max_steps * dt)
    escaped = np.zeros(n_particles, bool)
    sq = math.sqrt(dt)
    for k in range(max_steps):
        dw = rng.standard_normal(x.shape)
        x = x + problem.drift(x) * dt + problem.noise(x) * (sq * dw)
        out = x[:, 0] >= r
        if out.any():
            time_[idx[out]] = (k + 1) * dt
            escaped[idx[out]] = True
            keep = ~out
            x, idx = x[keep], idx[keep]
            if idx.size == 0:
                break
    return time_, escaped


def numpy_sweep(problems, n_particles, dt, t_max, seed=0):
    """One problem after another (NumPy has no better way to sweep)."""
    return [numpy_exits(p, n_particles, dt, t, seed) for p, t in zip(problems, t_max)]


# ----------------------------------------------------------------------------- diffrax

def _diffrax():
    import diffrax
    import lineax

    return diffrax, lineax


def _dtype():
    return jnp.zeros(()).dtype


def diffrax_vmap_solver(problem, n_particles, dt, t_max, *, event=True, brownian="virtual"):
    """jit(vmap(diffeqsolve)) over per-particle keys, as the diffrax docs suggest.

    Returns f(key) -> (time, escaped): exit times at the end of the step where the Event fired,
    t_max (censored) otherwise. With ``event=False`` it just integrates to t_max and returns
    the final states (fixed-step throughput).
    """
    diffrax, lineax = _diffrax()
    r = problem.exit_point
    d = problem.dim
    n_steps = int(math.ceil(t_max / dt - 1e-9))
    t1 = n_steps * dt

    def drift(t, y, args):
        return problem.drift(y, jnp)

    def diffusion(t, y, args):
        return lineax.DiagonalLinearOperator(jnp.broadcast_to(problem.noise(y, jnp), (d,)))

    def solve_one(key):
        if brownian == "virtual":
            bm = diffrax.VirtualBrownianTree(0.0, t1, tol=dt / 2, shape=(d,), key=key)
        else:
            bm = diffrax.UnsafeBrownianPath(shape=(d,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        ev = diffrax.Event(lambda t, y, args, **kw: y[0] >= r) if event else None
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, t1, dt0=dt,
                                  y0=jnp.zeros(d, _dtype()), saveat=diffrax.SaveAt(t1=True),
                                  max_steps=n_steps + 2, event=ev,
                                  adjoint=(diffrax.RecursiveCheckpointAdjoint()
                                           if brownian == "virtual" else diffrax.ForwardMode()))
        if not event:
            return sol.ys[-1]
        hit = sol.result == diffrax.RESULTS.event_occurred
        return jnp.where(hit, sol.ts[-1], t1), hit

    @jax.jit
    def run(key):
        return jax.vmap(solve_one)(jax.random.split(key, n_particles))

    return run


def _ensemble_exits(problem, r, t1, n, d, dt, max_steps, key):
    """The ensemble's exit solve: state (x, tau) for n particles in d dimensions, x frozen and
    tau stopped once x_0 >= r, diagonal noise on x, fixed Euler steps to t1 (or until every
    particle has left), UnsafeBrownianPath. ``problem`` (its drift and noise), ``r`` and ``t1``
    may be traced. Returns (time, escaped): tau where escaped, t1 otherwise."""
    diffrax, lineax = _diffrax()
    dtype = _dtype()
    flat = jax.ShapeDtypeStruct((n * d,), dtype)

    def inside(y):
        return (y[0].reshape(n, d)[:, 0] < r).astype(dtype)

    def drift(t, y, args):
        a = inside(y)
        mu = problem.drift(y[0].reshape(n, d), jnp) * a[:, None]
        return mu.reshape(-1), a

    def diffusion(t, y, args):
        g = (problem.noise(y[0].reshape(n, d), jnp) * inside(y)[:, None])
        g = jnp.broadcast_to(g, (n, d)).reshape(-1)
        # diagonal noise on x, none on tau: a linear map from the (n*d,) Brownian increment
        return lineax.FunctionLinearOperator(lambda dw: (g * dw, jnp.zeros(n, dtype)), flat)

    bm = diffrax.UnsafeBrownianPath(shape=(n * d,), key=key)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    ev = diffrax.Event(lambda t, y, args, **kw: jnp.all(y[0].reshape(n, d)[:, 0] >= r))
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, t1, dt0=dt,
                              y0=(jnp.zeros(n * d, dtype), jnp.zeros(n, dtype)),
                              saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
                              event=ev, adjoint=diffrax.ForwardMode())
    x, tau = sol.ys[0][-1], sol.ys[1][-1]
    escaped = x.reshape(n, d)[:, 0] >= r
    return jnp.where(escaped, tau, t1), escaped


def diffrax_ensemble_solver(problem, n_particles, dt, t_max, *, exits=True):
    """One diffeqsolve for the whole ensemble: state (x, tau), diagonal noise, fixed steps,
    UnsafeBrownianPath. Returns f(key) -> (time, escaped) (or the final x if ``exits=False``)."""
    n, d = n_particles, problem.dim
    n_steps = int(math.ceil(t_max / dt - 1e-9))
    t1 = n_steps * dt
    if exits:
        return jax.jit(functools.partial(_ensemble_exits, problem, problem.exit_point, t1, n, d,
                                         dt, n_steps + 2))
    diffrax, lineax = _diffrax()

    def drift(t, y, args):
        return problem.drift(y.reshape(n, d), jnp).reshape(-1)

    def diffusion(t, y, args):
        g = problem.noise(y.reshape(n, d), jnp)
        return lineax.DiagonalLinearOperator(jnp.broadcast_to(g, (n, d)).reshape(-1))

    @jax.jit
    def run(key):
        bm = diffrax.UnsafeBrownianPath(shape=(n * d,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, t1, dt0=dt,
                                  y0=jnp.zeros(n * d, _dtype()), saveat=diffrax.SaveAt(t1=True),
                                  max_steps=n_steps + 2, adjoint=diffrax.ForwardMode())
        return sol.ys[-1]

    return run


def diffrax_ensemble_sweep_solver(problems, n_particles, dt, t_max):
    """``diffrax_ensemble_solver`` for a sweep: one compiled solve whose parameters (h,
    sigma_g, sigma_h, exit point, t1) are traced, called once per problem (the problems
    differ only in their parameters). Returns f(key) -> [(time, escaped), ...]."""
    base = problems[0]
    t1s = [math.ceil(t / dt - 1e-9) * dt for t in t_max]
    max_steps = int(round(max(t1s) / dt)) + 2

    @jax.jit
    def run(key, h, s_g, s_h, r, t1):
        return _ensemble_exits(_Traced(base, h, s_g, s_h), r, t1, n_particles, 1, dt, max_steps,
                               key)

    def solve_all(key):
        return [jax.device_get(run(key, p.h, p.sigma_g, p.sigma_h, p.exit_point, t1))
                for p, t1 in zip(problems, t1s)]

    return solve_all


def diffrax_sweep_vmap_solver(problems, n_particles, dt, t_max):
    """The vmapped ensemble (UnsafeBrownianPath) vmapped again over the sweep's problems:
    one compiled call for the whole sweep (the problems differ only in their parameters)."""
    diffrax, lineax = _diffrax()
    base = problems[0]
    hs = jnp.asarray([p.h for p in problems])
    sgs = jnp.asarray([p.sigma_g for p in problems])
    shs = jnp.asarray([p.sigma_h for p in problems])
    rs = jnp.asarray([p.exit_point for p in problems])
    t1 = float(max(math.ceil(t / dt - 1e-9) for t in t_max) * dt)
    t1s = jnp.asarray([math.ceil(t / dt - 1e-9) * dt for t in t_max])
    n_steps = int(round(t1 / dt))

    def solve_one(key, h, s_g, s_h, r, tcut):
        p = _Traced(base, h, s_g, s_h)

        def drift(t, y, args):
            return p.drift(y, jnp)

        def diffusion(t, y, args):
            return lineax.DiagonalLinearOperator(p.noise(y, jnp).reshape(1))

        bm = diffrax.UnsafeBrownianPath(shape=(1,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        ev = diffrax.Event(lambda t, y, args, **kw: y[0] >= r)
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, tcut, dt0=dt,
                                  y0=jnp.zeros(1, _dtype()), saveat=diffrax.SaveAt(t1=True),
                                  max_steps=n_steps + 2, event=ev, adjoint=diffrax.ForwardMode())
        hit = sol.result == diffrax.RESULTS.event_occurred
        return jnp.where(hit, sol.ts[-1], tcut), hit

    @jax.jit
    def run(key):
        keys = jax.random.split(key, n_particles)
        per_problem = jax.vmap(solve_one, in_axes=(None, 0, 0, 0, 0, 0))
        # -> (time, escaped), each of shape (n_problems, n_particles)
        return jax.vmap(per_problem, in_axes=(0, None, None, None, None, None),
                        out_axes=1)(keys, hs, sgs, shs, rs, t1s)

    return run


class _Traced:
    """A Problem whose h, sigma_g, sigma_h are traced arrays (for vmapping over a sweep)."""

    def __init__(self, base, h, sigma_g, sigma_h):
        self.base, self.h, self.sigma_g, self.sigma_h = base, h, sigma_g, sigma_h

    def drift(self, x, xp):
        from sgdyn.theory.wells import kramers_grad
        return -kramers_grad(x, self.h, self.h, self.base.barrier, xp=xp)

    def noise(self, x, xp):
        from sgdyn.theory.wells import kramers_loss
        from .problems import B, LR
        loss = kramers_loss(x, self.h, self.h, self.base.barrier, xp=xp)
        return xp.sqrt(LR / B * (self.sigma_g + 2 * self.sigma_h / self.h * xp.maximum(loss, 0.)))


REPEATS = 7  # timed throughputs and ceilings: median of 7 (3 let one noisy run skew a ratio)


def timed(fn, *args, repeats=1):
    """(result, median seconds) of fn(*args) after one untimed warm-up call (compilation)."""
    out = jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return out, float(np.median(ts))
