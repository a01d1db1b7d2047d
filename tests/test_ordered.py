"""Sums over a particle's coordinates round the same in every batch (sgdyn.ordered), so the
engine's per-particle results do not depend on how many particles run beside them."""

import jax
import numpy as np
import pytest

import sgdyn as sg
from sgdyn.ordered import ordered_dot, ordered_matvec, ordered_norm, ordered_sum


@pytest.mark.parametrize("d", [1, 2, 3, 10, 17, 24, 100, 257])
def test_ordered_sums_are_accurate_and_the_same_in_every_batch(d):
    rng = np.random.default_rng(d)
    v = rng.standard_normal((16384, d)).astype(np.float32)
    m = rng.standard_normal((d, d)).astype(np.float32)

    @jax.jit
    def sums(v):
        per_particle = lambda x: (ordered_sum(x), ordered_dot(x, x), ordered_norm(x),
                                  ordered_dot(m, x), ordered_matvec(m, x))  # m @ x twice
        return jax.vmap(per_particle)(v)

    few, many = sums(v[:64]), sums(v)
    for a, b in zip(few, many):
        np.testing.assert_array_equal(a, b[:64])
    exact = v.astype(np.float64)
    # pairwise: a few ulp of the sum of magnitudes at most
    product = (exact @ m.T.astype(np.float64), np.abs(exact) @ np.abs(m.T))
    for got, want, scale in ((many[0], exact.sum(1), np.abs(exact).sum(1)),
                             (many[1], (exact**2).sum(1), (exact**2).sum(1)),
                             (many[3], *product)):
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= 8e-7 * scale + 1e-30)
    # term by term: round-off grows like d ulp (a few hundred ulp at most for d = 257)
    want, scale = exact @ m.T.astype(np.float64), np.abs(exact) @ np.abs(m.T)
    assert np.all(np.abs(np.asarray(many[4], np.float64) - want) <= 1e-7 * d * scale)
    np.testing.assert_allclose(many[2], np.sqrt((exact**2).sum(1)), rtol=1e-6)


@pytest.mark.parametrize("d", [5, 32, 33, 64, 65, 100, 257])
def test_ordered_sums_add_in_the_documented_order(d):
    """First half plus second half until one entry is left, then the leftovers of odd
    lengths in the order they were set aside, whether a fold goes by halves of arrays or
    entry by entry (sgdyn.ordered switches at ENTRYWISE entries): float32 additions in that
    order, by hand, give the same bits."""
    v = np.random.default_rng(d).standard_normal((7, d)).astype(np.float32) * 1e3
    w, leftovers = v, []
    while w.shape[1] > 1:
        n = w.shape[1]
        if n % 2:
            leftovers.append(w[:, n - 1:])
        w = w[:, :n // 2] + w[:, n // 2:2 * (n // 2)]
    for last in leftovers:
        w = w + last
    np.testing.assert_array_equal(ordered_sum(v, xp=np), w[:, 0])
    np.testing.assert_array_equal(np.asarray(jax.jit(ordered_sum)(v)), w[:, 0])
    np.testing.assert_array_equal(ordered_dot(v, v, xp=np), ordered_sum(v * v, xp=np))


def test_ordered_sum_over_another_axis_and_empty_axes():
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(ordered_sum(x, axis=0), x.sum(0))
    np.testing.assert_array_equal(ordered_sum(x, axis=0, xp=np), x.sum(0))
    assert ordered_sum(np.zeros((2, 0))).shape == (2,) and float(ordered_sum(np.zeros(0))) == 0.0


def _dynamics():
    q10 = sg.Quadratic.make(1.0, dim=10)
    st = sg.StyblinskiTang.make(10, 0.01)
    sde = lambda land, noise: sg.EulerMaruyama.make(sg.SDE.make(land, noise, 0.1, 1), 0.01)
    return {
        "PLD local, 10-D, shaped": (sde(q10, sg.PLDLocal.make(1.0, 1.0, shape=np.eye(10) + 0.1)),
                                    np.zeros(10)),
        "PLD loss, 10-D Styblinski-Tang": (sde(st, sg.PLDLoss.make(st, 1.0, 1.0)),
                                           np.full(10, 2.75)),
        "PLD local, 20-D": (sde(sg.Quadratic.make(1.0, dim=20), sg.PLDLocal.make(1.0, 1.0)),
                            np.zeros(20)),
        "Hessian noise, 10-D": (sde(q10, sg.HessianNoise.make(q10, 1.0)), np.zeros(10)),
        "SGD, 1-D synthetic PLD, batch 8": (sg.MinibatchSGD.make(
            sg.SyntheticPLD.make(sg.Quadratic.make(1.0), 1.0, 1.0, 1000), 0.01, 8), np.zeros(1)),
        "SGD, 3-D least squares, batch 8": (sg.MinibatchSGD.make(
            sg.LeastSquares.generate(200, 3), 0.01, 8), np.zeros(3)),
    }


@pytest.mark.parametrize("name", list(_dynamics()))
def test_particle_count_changes_no_particle(name):
    """64 particles are the first 64 of 16384, bit for bit. Before the ordered sums each of
    these dynamics but the Hessian noise rounded differently with 16384 particles on a CPU
    (XLA chose another reduction kernel for the bigger batch)."""
    dyn, x0 = _dynamics()[name]
    few = sg.simulate_samples(jax.random.key(3), dyn, x0, 64, 20, 2, 5)
    many = sg.simulate_samples(jax.random.key(3), dyn, x0, 16384, 20, 2, 5)
    assert np.all(np.isfinite(np.asarray(many.x)))
    np.testing.assert_array_equal(few.x, many.x[:, :64])


def _ou(d):
    sde = sg.SDE.make(sg.Quadratic.make(1.0, dim=d), sg.PLDLocal.make(1.0, 0.05), 0.1, 1)
    return sg.EulerMaruyama.make(sde, 0.05)


@pytest.mark.parametrize("d, radius, bound", [(32, 1.6, 0.7), (4, 0.7, 0.5)])
def test_coordinate_major_blocks_step_the_same_particles(monkeypatch, d, radius, bound):
    """From ensemble.coordinate_major_dim() coordinates on (8 on a CPU, 3 on a GPU), the engine
    steps its states as (d, N). Its particles follow the particle-major paths to round-off (the
    two layouts fuse multiply-adds differently, so not bit for bit), in samples and in exit runs
    with their outcome marks, and it keeps the promise of bit-identical records across array
    sizes. 4-D is the GPU's layout, run here with the CPU's threshold moved to 3."""
    from sgdyn import ensemble

    backend, gpu = jax.default_backend(), ensemble.coordinate_major_dim("gpu")
    if d < ensemble.coordinate_major_dim():
        monkeypatch.setitem(ensemble.COORDINATE_MAJOR_DIM, backend, gpu)
    default = ensemble.coordinate_major_dim()
    assert d >= default
    # the radius: about 60% escape by t = 4; the bound: 20-90% diverge
    dyn, region = _ou(d), sg.Ball.make(np.zeros(d), radius)
    runs = {}
    for layout, threshold in (("coordinate", d), ("particle", d + 1)):
        monkeypatch.setitem(ensemble.COORDINATE_MAJOR_DIM, backend, threshold)
        assert ensemble._Layout.of(dyn).coordinate_major == (layout == "coordinate")
        bounded = sg.simulate_samples(jax.random.key(1), dyn, np.zeros(d), 256, 0, 8, 5,
                                      divergence_bound=bound)
        x = np.asarray(bounded.x)  # a sample is all NaN from its particle's divergence on
        gone = np.isnan(x).any(axis=2)
        assert np.all(np.isnan(x[gone])) and np.all(np.abs(x[~gone]) <= bound)
        assert np.all(gone[1:] >= gone[:-1]) and 0.2 < np.mean(bounded.diverged) < 0.9
        np.testing.assert_array_equal(bounded.diverged, gone[-1])
        runs[layout + " bounded"] = bounded.diverged
        runs[layout] = (sg.simulate_samples(jax.random.key(1), dyn, np.zeros(d), 256, 40, 3, 7),
                        sg.measure_exit_times(jax.random.key(2), dyn, region, np.zeros(d), 4000,
                                              4.0, correction="bridge", min_bucket=64).record)
    (cs, ce), (ps, pe) = runs["coordinate"], runs["particle"]
    assert np.mean(runs["coordinate bounded"] == runs["particle bounded"]) > 0.99
    np.testing.assert_allclose(cs.x, ps.x, rtol=1e-4, atol=1e-5)
    assert 0.2 < np.mean(ce.escaped) < 0.9 and np.mean(ce.censored) > 0.05  # both outcomes
    assert np.mean(ce.time == pe.time) > 0.99 and np.mean(ce.escaped == pe.escaped) > 0.99
    monkeypatch.setitem(ensemble.COORDINATE_MAJOR_DIM, backend, default)
    few = sg.measure_exit_times(jax.random.key(2), dyn, region, np.zeros(d), 4000, 4.0,
                                correction="bridge", n_slots=256, min_bucket=64).record
    for f in ("time", "escaped", "censored", "diverged"):
        np.testing.assert_array_equal(getattr(few, f), getattr(ce, f))
    small = sg.simulate_samples(jax.random.key(1), dyn, np.zeros(d), 64, 40, 3, 7)
    np.testing.assert_array_equal(small.x, cs.x[:, :64])


def test_the_layout_threshold_is_the_default_devices_platforms():
    """The engine picks the layout when it traces, from the platform it will run on by
    default: jax.default_device where one is set, else the default backend."""
    from sgdyn import ensemble

    table = ensemble.COORDINATE_MAJOR_DIM
    assert ensemble.coordinate_major_dim() == table[jax.default_backend()]
    with jax.default_device("gpu"):  # a platform name: nothing runs, nothing is looked up
        assert ensemble.coordinate_major_dim() == table["gpu"]
    with jax.default_device(jax.devices("cpu")[0]):
        assert ensemble.coordinate_major_dim() == table["cpu"]
    for name in ("cuda", "rocm"):
        assert ensemble.coordinate_major_dim(name) == table["gpu"]
    assert ensemble.coordinate_major_dim("tpu") == table["cpu"]  # unmeasured: the CPU's


@pytest.mark.parametrize("d, layout_of", [(8, "cpu"), (13, "cpu"), (32, "cpu"), (3, "gpu"),
                                         (7, "gpu")])
def test_coordinate_major_samples_have_the_exact_stationary_variance(monkeypatch, d, layout_of):
    """Isotropic OU in d dimensions (coordinate-major from 8 on on a CPU, from 3 on on a GPU;
    the GPU's 3-D and 7-D layout run here with the threshold moved): x' = (1 - h dt) x +
    g sqrt(dt) xi has the stationary variance g^2 dt / (1 - (1 - h dt)^2) per coordinate,
    exactly, after the burn-in. 8192 particles x d coordinates, independent: the relative
    standard error of the variance is sqrt(2 / (8192 d)) (0.28% in 32-D); the tolerance is 6
    of them (1e-9 false alarm)."""
    from sgdyn import ensemble

    monkeypatch.setitem(ensemble.COORDINATE_MAJOR_DIM, jax.default_backend(),
                        ensemble.coordinate_major_dim(layout_of))
    h, dt, lr = 2.0, 0.05, 0.1
    dyn = sg.EulerMaruyama.make(sg.SDE.make(sg.Quadratic.make(h, dim=d), sg.Isotropic.make(1.5),
                                            lr, 1), dt)
    assert ensemble._Layout.of(dyn).coordinate_major
    rec = sg.simulate_samples(jax.random.key(4), dyn, np.zeros(d), 8192, 400, 1)
    g2 = lr * 1.5
    exact = g2 * dt / (1 - (1 - h * dt) ** 2)  # burn-in: (1 - h dt)^800 of the start is gone
    var = float(np.mean(np.asarray(rec.x, np.float64) ** 2))
    assert abs(var / exact - 1) < 6 * np.sqrt(2 / (8192 * d)), (var, exact)
    # every coordinate gets its own noise: no two coordinates of a particle move together
    corr = np.corrcoef(np.asarray(rec.x[0], np.float64).T)
    assert np.max(np.abs(corr - np.eye(d))) < 6 / np.sqrt(8192)


@pytest.mark.parametrize("correction", [None, "gobet", "bridge"])
def test_coordinate_major_exit_tests_transpose_no_state(correction):
    """vmap moves the particles' axis to the front where a batched state meets a shared
    vector (x - center): coordinate-major, that was a transposed (N, d) copy of the state in
    every exit test, which XLA wrote out (100-D exit runs 3.4-4x slower).
    ``_Layout.per_particle`` hands such parameters in batched: a Ball's exit test traces
    without transposing a state, and steps and tests give the particle-major numbers. (The
    corrections' normal, dx / |dx|, still moves the axis: a per-particle scalar meets a
    vector, and vmap batches the scalar on its only axis.)"""
    import re

    from sgdyn import ensemble
    from sgdyn.regions import exited

    d, n = 40, 128
    rng = np.random.default_rng(0)
    dyn = _ou(d)
    region = sg.Ball.make(rng.standard_normal(d), 6.0)
    x, xi = (rng.standard_normal((d, n)).astype(np.float32) for _ in range(2))
    u = rng.uniform(size=(1, n)).astype(np.float32)

    def step(layout, x, xi):
        return layout.per_particle(lambda dyn, x, xi: dyn.step(x, (xi,)), dyn, x, xi)

    def test(layout, a, b, u):
        return layout.per_particle(lambda p, a, b, u: exited(*p, a, b, u[0], correction),
                                   (region, dyn), a, b, u)

    coordinate, particle = ensemble._Layout(True), ensemble._Layout(False)
    if correction is None:
        jaxpr = str(jax.make_jaxpr(lambda *a: test(coordinate, *a))(x, 1.05 * x, u))
        transposed = re.findall(r"f32\[(\d+),(\d+)\] = transpose", jaxpr)
        assert all(1 in (int(a), int(b)) for a, b in transposed), transposed  # [1, N]: free
    x_new = step(coordinate, x, xi)
    np.testing.assert_array_equal(x_new, step(particle, x.T, xi.T).T)
    out = test(coordinate, x, x_new, u)
    np.testing.assert_array_equal(out, test(particle, x.T, x_new.T, u.T))
    assert 0 < np.mean(out) < 1  # both outcomes


def test_ordered_sums_refuse_what_they_cannot_sum_and_promote_like_jnp_sum():
    for bad in (lambda: ordered_matvec(np.ones((3, 2)), np.ones(3)),
                lambda: ordered_matvec(np.ones((2, 3)), np.ones(2)),
                lambda: ordered_dot(np.ones(3), np.ones(1)),
                lambda: ordered_matvec(np.ones((2, 0)), np.ones(0)),
                lambda: ordered_sum(np.float32(3.0)),
                lambda: ordered_norm(np.float32(3.0)),
                lambda: ordered_norm(np.float32(3.0), xp=np)):
        with pytest.raises(ValueError):
            bad()
    assert int(ordered_sum(np.array([True] * 3))) == 3 == int(ordered_sum([True] * 3, xp=np))
    assert int(ordered_sum(np.full(3, 100, np.int8))) == 300
    assert ordered_sum(np.ones(3, np.float32)).dtype == np.float32


@pytest.mark.parametrize("d", [2, 32])
def test_samples_without_a_sample_still_flag_divergence(d):
    dyn, bound = _ou(d), 0.7 if d == 32 else 0.4
    rec = sg.simulate_samples(jax.random.key(0), dyn, np.zeros(d), 100, 30, 0,
                              divergence_bound=bound)
    assert rec.x.shape == (0, 100, d) and rec.diverged.shape == (100,)
    assert 0.1 < np.mean(rec.diverged) < 0.9
    one = sg.simulate_samples(jax.random.key(0), dyn, np.zeros(d), 100, 29, 1,
                              divergence_bound=bound)
    np.testing.assert_array_equal(rec.diverged, one.diverged)  # the same 30 steps
