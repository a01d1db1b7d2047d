"""Sharded exit simulation (sgdyn.sharding) against one device: bit-identical records.

Runs in a subprocess with two forced host devices, so it works on any CPU machine.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import jax, numpy as np
    import sgdyn as sg
    from sgdyn import runner, sharding

    assert jax.device_count() == 2, jax.devices()
    fields = ("time", "escaped", "diverged", "censored")

    def same(a, b):
        for f in fields:
            assert np.array_equal(getattr(a, f), getattr(b, f)), f

    # OU exit from an interval: some particles censored, compaction happens (min_bucket small)
    ou = sg.SDE.make(sg.Quadratic.make(1.0), sg.Isotropic.make(1.0), lr=1.0, batch_size=1)
    for inc, corr, n in (("gaussian", "gobet", 5001), ("two_point", None, 3000),
                         ("gaussian", "bridge", 2500)):
        dyn = sg.EulerMaruyama.make(ou, 0.01, inc)
        args = (jax.random.key(5), dyn, sg.Interval.make(-1.0, 1.0), [0.0], n, 2.0)
        one = sg.measure_exit_times(*args, correction=corr, min_bucket=256)
        two = sharding.measure_exit_times_sharded(*args, correction=corr, min_bucket=256)
        same(one.record, two.record)
        # 512 slots over 2 devices: each device refills its slots from its own queue
        refilled = sharding.measure_exit_times_sharded(*args, correction=corr, min_bucket=64,
                                                       n_slots=512)
        same(one.record, refilled.record)
        assert one.estimate == two.estimate
        assert 0 < one.estimate.n_censored < n
        kernel = sharding.simulate_exits_sharded(*args, correction=corr)
        same(one.record, kernel)

    # a 2-D Kramers-like problem with real SGD (word noise) and the exit kernel
    land = sg.KramersWell.make(4.0, 4.0, 0.3)
    sgd = sg.MinibatchSGD.make(sg.SyntheticPLD.make(land, 2.0, 4.0, 50, seed=1), 0.1, 1)
    args = (jax.random.key(1), sgd, sg.Threshold(1.3), [0.0], 1024, 50.0)
    same(sg.measure_exit_times(*args, min_bucket=256).record,
         sharding.measure_exit_times_sharded(*args, min_bucket=256).record)

    # 32-D: the engine's coordinate-major blocks (ensemble.coordinate_major_dim()), refilled
    from sgdyn import ensemble
    d = 32
    assert d >= ensemble.coordinate_major_dim()
    sde = sg.SDE.make(sg.Quadratic.make(1.0, dim=d), sg.PLDLocal.make(1.0, 0.05), 0.1, 1)
    args = (jax.random.key(5), sg.EulerMaruyama.make(sde, 0.05), sg.Ball.make(np.zeros(d), 1.6),
            np.zeros(d), 3001, 4.0)
    one = sg.measure_exit_times(*args, correction="bridge", min_bucket=64).record
    assert 0.3 < np.mean(one.escaped) < 0.9
    same(one, sharding.measure_exit_times_sharded(*args, correction="bridge", min_bucket=64,
                                                  n_slots=512).record)

    # the arrays really are split over both devices
    mesh = sharding.particle_mesh()
    assert mesh.devices.size == 2
    x = runner._Layout(mesh).put(np.zeros((8, 1)))
    assert len({s.device for s in x.addressable_shards}) == 2
    # training: 3 seeds over 2 devices (one padding seed), against one device
    import optax
    from sgdyn.train import MLP, mnist1d, train
    data = mnist1d(num_samples=600)
    kw = dict(lr=0.1, batch_size=50, epochs=2, sharpness_iters=3, seeds=[0, 1, 2])
    sgd = lambda lr, key: optax.sgd(lr)
    split = train(MLP(hidden=(16,), num_classes=10), data, sgd, **kw)
    alone = train(MLP(hidden=(16,), num_classes=10), data, sgd, shard_seeds=False, **kw)
    assert split.test_acc.shape == (2, 3) and split.sharpness.shape == (3,)
    for f in ("train_loss", "test_loss", "sharpness"):
        np.testing.assert_allclose(getattr(split, f), getattr(alone, f), rtol=1e-4)
    # with a noise injection: each seed's own noise key follows it onto its device
    from sgdyn.train import add_isotropic_noise
    noisy = lambda lr, key: optax.chain(add_isotropic_noise(0.05, key), optax.sgd(lr))
    split = train(MLP(hidden=(16,), num_classes=10), data, noisy, **kw)
    alone_noisy = train(MLP(hidden=(16,), num_classes=10), data, noisy, shard_seeds=False, **kw)
    np.testing.assert_allclose(split.train_loss, alone_noisy.train_loss, rtol=1e-4)
    assert not np.allclose(alone_noisy.train_loss, alone.train_loss, rtol=1e-3)  # noise acts
    # at most one device per seed: one seed is not padded onto the second device
    from sgdyn.train import loop
    assert loop.seed_mesh(n_seeds=1) is None and loop.seed_mesh(n_seeds=3).devices.size == 2
    meshes, seed_mesh = [], loop.seed_mesh
    loop.seed_mesh = lambda *a, **k: meshes.append(seed_mesh(*a, **k)) or meshes[-1]
    one = train(MLP(hidden=(16,), num_classes=10), data, sgd, **dict(kw, seeds=[2]))
    loop.seed_mesh = seed_mesh
    assert meshes == [None], meshes
    np.testing.assert_array_equal(one.test_loss[:, 0], alone.test_loss[:, 2])
    print("OK")
""")


def test_sharded_equals_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_force_host_platform_device_count=2").strip())
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
