"""Sums over a particle's coordinates round the same in every batch (sgdyn.ordered), so the
engine's per-particle results do not depend on how many particles run beside them."""

import jax
import numpy as np
import pytest

import sgdyn as sg
from sgdyn.ordered import ordered_dot, ordered_norm, ordered_sum


@pytest.mark.parametrize("d", [1, 2, 3, 10, 100, 257])
def test_ordered_sums_are_accurate_and_the_same_in_every_batch(d):
    rng = np.random.default_rng(d)
    v = rng.standard_normal((16384, d)).astype(np.float32)
    m = rng.standard_normal((d, d)).astype(np.float32)

    @jax.jit
    def sums(v):
        per_particle = lambda x: (ordered_sum(x), ordered_dot(x, x), ordered_norm(x),
                                  ordered_dot(m, x))  # m @ x
        return jax.vmap(per_particle)(v)

    few, many = sums(v[:64]), sums(v)
    for a, b in zip(few, many):
        np.testing.assert_array_equal(a, b[:64])
    exact = v.astype(np.float64)
    # pairwise: a few ulp of the sum of magnitudes at most
    for got, want, scale in ((many[0], exact.sum(1), np.abs(exact).sum(1)),
                             (many[1], (exact**2).sum(1), (exact**2).sum(1)),
                             (many[3], exact @ m.T.astype(np.float64), np.abs(exact) @ np.abs(m.T))):
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= 8e-7 * scale + 1e-30)
    np.testing.assert_allclose(many[2], np.sqrt((exact**2).sum(1)), rtol=1e-6)


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
