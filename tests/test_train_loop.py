"""Training loop, data, models and sharpness: determinism, vmap equivalence, divergence,
the minibatch order against jax.random.permutation, exact-Hessian check of power iteration,
offline data, argument checks."""

import random
import socket

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sgdyn.train import (MLP, CNN1D, Dataset, add_fisher_noise, init_params,
                         lanczos_top_eigenvalue, load_dataset, load_npz, make_model, mean_loss,
                         mnist1d, per_example_grads, power_iteration, teacher_student,
                         top_hessian_eigenvalue, train)
from sgdyn.train import loop, shuffle

DATA = teacher_student(192, 64, dim=8, num_classes=4, teacher_width=16, seed=3)
MODEL = MLP(hidden=(16,), num_classes=4)


# module-level optimizer functions: the loop caches compiled epochs per function object
def sgd(lr, key):
    return optax.sgd(lr)


def noisy_momentum(lr, key):
    return optax.chain(add_fisher_noise(8, 32, key), optax.sgd(lr, momentum=0.9))


def plain_sgd(lr, key):
    """A plain GradientTransformation, which takes no extra arguments such as loss=."""
    return optax.scale(-lr)


def poisoned_sgd(lr, key):
    """SGD whose update turns inf at step 11 (the last of epoch 2 of 3, 6 steps each) for seeds
    trained at lr > 0.205: that step's loss is still finite, only the new weights are not."""

    def update(updates, count, params=None, **extra):
        bad = (count == 11) & (lr > 0.205)
        return jax.tree.map(lambda g: jnp.where(bad, jnp.inf, -lr * g), updates), count + 1

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros((), jnp.int32), update)


def blown_up_sgd(lr, key):
    """SGD whose last step of epoch 2 (count 11) multiplies the weights of seeds trained at
    lr > 0.205 by 1e30: still finite, but their logits overflow (a NaN loss no batch of the
    epoch saw)."""

    def update(updates, count, params=None, **extra):
        bad = (count == 11) & (lr > 0.205)
        return jax.tree.map(lambda g, p: jnp.where(bad, 1e30 * p, -lr * g), updates,
                            params), count + 1

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros((), jnp.int32), update)


def value_checking_sgd(lr, key):
    """SGD that needs Optax's value= (like optax.polyak_sgd) and steps as SGD only where it
    equals loss=."""

    def update(updates, count, params=None, *, value, loss, **extra):
        return jax.tree.map(lambda g: -lr * g * (1 + (value - loss)), updates), count + 1

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros((), jnp.int32), update)


def run(seeds, lr=0.2, optimizer_fn=sgd, **kw):
    kw = {"batch_size": 32, "epochs": 3, "sharpness_iters": 5, **kw}
    return train(MODEL, DATA, optimizer_fn, lr=lr, seeds=seeds, **kw)


FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "sharpness")


def test_same_seed_same_result():
    a, b = run([0, 1, 2]), run([0, 1, 2])
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.train_loss.shape == (3, 3) and not a.diverged.any()
    assert a.train_loss[-1].mean() < a.train_loss[0].mean()  # it learns
    assert not np.array_equal(a.train_loss[:, 0], a.train_loss[:, 1])  # seeds differ


@pytest.mark.parametrize("noisy", [False, True])
def test_vmapped_seeds_match_one_by_one(noisy):
    kw = dict(optimizer_fn=noisy_momentum, per_example_grads=8, loss_weight_scale=1.5,
              lr=0.05) if noisy else {}
    # true float32 products: under JAX's default matmul precision a GPU may use reduced-precision
    # (TF32) products, which a batched and a single product round differently. Measured on an
    # H200: seed 1's parameters differed by up to 1.2e-5 of the largest (some by 1.2e-4 of
    # their own size) at the default, by 7e-8 at "float32"; identically on every rerun.
    with jax.default_matmul_precision("float32"):
        together = run([0, 1, 2], **kw)
        alones = [run([seed], **kw) for seed in [0, 1, 2]]
    for i, (seed, alone) in enumerate(zip([0, 1, 2], alones)):
        for f in FIELDS:
            np.testing.assert_allclose(getattr(together, f)[..., i], getattr(alone, f)[..., 0],
                                       rtol=2e-5, atol=2e-6, err_msg=f"{f}, seed {seed}")
        pa = ravel_pytree(jax.tree.map(lambda x: x[i], together.params))[0]
        np.testing.assert_allclose(pa, ravel_pytree(jax.tree.map(lambda x: x[0], alone.params))[0],
                                   rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 4000, 4096, shuffle.MAX_PACKED,
                               shuffle.MAX_PACKED + 1])
def test_minibatch_order_is_jax_random_permutation_bit_for_bit(n):
    # seeds must keep their data order (and so their numbers) from before the cheaper sorts
    keys = jax.random.split(jax.random.key(3), 25)
    ours = jax.jit(jax.vmap(lambda k: shuffle.permutation(k, n)))(keys)
    np.testing.assert_array_equal(ours, jax.vmap(lambda k: jax.random.permutation(k, n))(keys))


def test_stable_argsort_keeps_equal_words_in_order():
    rng = np.random.default_rng(0)
    low, high = rng.integers(0, 1 << 16, (2, 5000), dtype=np.uint32)
    few = rng.integers(0, 3, 5000, dtype=np.uint32)
    # ties in the whole word, in its high half only, in its low half only, and none
    for words in (few, few << 16 | low, high << 16 | few, high << 16 | low):
        np.testing.assert_array_equal(shuffle.stable_argsort(jnp.asarray(words)),
                                      np.argsort(words, kind="stable"))


@pytest.mark.parametrize("optimizer_fn, lr, step", [(poisoned_sgd, [0.2, 0.21, 0.2], 11),
                                                   (sgd, [0.2, 1e30, 0.2], None)])
def test_epochs_run_unchecked_give_what_checking_every_step_gives(monkeypatch, optimizer_fn,
                                                                   lr, step):
    """An epoch is run again with every step checked only where a seed diverged in it, and the
    result is the every-step-checked run's, for inf weights after a finite loss and for NaN
    losses, in the epoch of the divergence and the frozen epochs after it."""
    reruns = []
    select = loop._select_seeds
    monkeypatch.setattr(loop, "_select_seeds", lambda *a: reruns.append(1) or select(*a))
    with jax.default_matmul_precision("float32"):  # see same_numbers
        with pytest.warns(RuntimeWarning, match=r"seeds \[1\] diverged"):
            fast = run([0, 1, 2], lr=lr, optimizer_fn=optimizer_fn)
        assert len(reruns) == 1  # only the epoch in which seed 1 diverged
        monkeypatch.setattr(loop, "_epoch",
                            lambda unchecked, checked, state, *a: checked(state, *a))
        with pytest.warns(RuntimeWarning):
            checked = run([0, 1, 2], lr=lr, optimizer_fn=optimizer_fn)
    assert fast.diverged.tolist() == [False, True, False]
    np.testing.assert_array_equal(fast.diverged_step, checked.diverged_step)
    if step is not None:
        assert fast.diverged_step[1] == step
    for f in FIELDS:
        same_numbers(getattr(fast, f), getattr(checked, f), err_msg=f)
    for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(checked.params)):
        same_numbers(a, b)


def same_numbers(a, b, err_msg=""):
    """Bit for bit on a CPU. An accelerator compiles the unchecked and the checked epoch into
    different programs whose float32 products (chosen per program) may round differently: there
    the same NaNs and infs, and finite numbers within float32 rounding grown over 3 epochs."""
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(a, b, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=err_msg)


def test_a_repeated_run_compiles_nothing_and_the_checked_epoch_only_on_divergence():
    """A second train() of one configuration reuses every compiled program, and a run with no
    divergence never builds the every-step-checked epoch (compiled lazily, on divergence)."""
    loop._compiled.cache_clear()  # other tests' divergent runs built this configuration's
    run([0, 1], sharpness_iters=0)
    init, unchecked, checked = loop._compiled(MODEL, sgd, 32, DATA.n_train // 32, 0, 0.0)
    metrics, _ = loop._evaluators(MODEL, 0)
    programs = (loop._param_init(MODEL), init, unchecked, metrics)
    before = [p._cache_size() for p in programs]
    assert min(before) >= 1  # the cached programs are the ones train() ran
    run([0, 1], sharpness_iters=0)
    assert [p._cache_size() for p in programs] == before
    assert checked._cache_size() == 0  # nothing diverged: the checked epoch was never built


@pytest.mark.parametrize("model", [MODEL, MLP(), CNN1D()], ids=["mlp16", "mlp100", "cnn"])
def test_initial_weights_are_those_of_xla_defaults(model):
    """init_params compiles the initialisers with cheaper LLVM optimisation on a CPU
    (loop.INIT_COMPILER_OPTIONS): the weights must stay those of a default jax.jit."""
    x = np.zeros((1, 40), np.float32)
    for seeds in ([0], [3, 1, 4, 1, 5]):
        ours = init_params(model, seeds, x)
        default = jax.jit(jax.vmap(lambda seed: model.init(loop._seed_keys(seed)[0], x)))(
            jnp.asarray(seeds, jnp.uint32))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):
            np.testing.assert_array_equal(a, b)


def test_nan_seed_stops_alone():
    with pytest.warns(RuntimeWarning, match=r"seeds \[1\] diverged"):
        res = run([0, 1, 2], lr=[0.2, 1e30, 0.2])
    assert res.diverged.tolist() == [False, True, False]
    assert res.diverged_step[1] >= 0 and res.diverged_step[0] == -1
    frozen = ravel_pytree(jax.tree.map(lambda x: x[1], res.params))[0]
    assert np.all(np.isfinite(frozen))  # frozen at the last finite weights
    ok = run([0, 1, 2])  # the healthy seeds are unaffected by their diverged neighbour
    for f in ("train_loss", "test_acc", "sharpness"):
        np.testing.assert_allclose(getattr(res, f)[..., [0, 2]], getattr(ok, f)[..., [0, 2]],
                                   rtol=2e-5, atol=2e-6)
    assert np.all(np.isfinite(ok.final()["test_acc"]))


def test_a_loss_that_turns_nan_after_the_last_step_is_flagged():
    """Finite weights that give a NaN loss after an epoch's last step mark their seed diverged
    at the next step, whether or not another epoch follows (with 2 epochs it used to go
    unflagged, NaN losses and all), and freeze it there."""
    runs = []
    for epochs in (2, 3):
        with pytest.warns(RuntimeWarning, match=r"seeds \[1\] diverged .* at steps \[12\]"):
            runs.append(run([0, 1, 2], lr=[0.2, 0.21, 0.2], optimizer_fn=blown_up_sgd,
                            epochs=epochs, sharpness_iters=0))
    healthy = run([0, 1, 2], lr=[0.2, 0.21, 0.2], epochs=3, sharpness_iters=0)
    for res in runs:
        assert res.diverged.tolist() == [False, True, False]
        assert res.diverged_step.tolist() == [-1, 12, -1]
        assert np.isnan(res.train_loss[1:, 1]).all()
        same_numbers(res.train_loss[:, [0, 2]], healthy.train_loss[:len(res.train_loss), [0, 2]])
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(a[1], b[1])  # frozen after epoch 2
        assert np.all(np.isfinite(a[1]))


def test_updates_get_optax_value_as_the_batch_loss():
    np.testing.assert_array_equal(
        run([0, 1], optimizer_fn=value_checking_sgd, epochs=2, sharpness_iters=0).train_loss,
        run([0, 1], epochs=2, sharpness_iters=0).train_loss)
    res = run([0], optimizer_fn=lambda lr, k: optax.polyak_sgd(max_learning_rate=lr), epochs=1,
              sharpness_iters=0)
    assert np.all(np.isfinite(res.train_loss))
    # optax.MultiSteps is no GradientTransformation but an optimizer all the same, and passes
    # value= on to what it wraps
    accumulated = run([0, 1], optimizer_fn=lambda lr, k: optax.MultiSteps(optax.sgd(lr), 2),
                      epochs=2, sharpness_iters=0)
    np.testing.assert_array_equal(accumulated.train_loss, run(
        [0, 1], optimizer_fn=lambda lr, k: optax.MultiSteps(optax.sgd(lr), 2)
        .gradient_transformation(), epochs=2, sharpness_iters=0).train_loss)
    run([0], optimizer_fn=lambda lr, k: optax.MultiSteps(optax.polyak_sgd(lr), 2), epochs=1,
        sharpness_iters=0)


def closure_noise(lr, key):
    """Pure noise drawn from the construction key (fold_in by step), not kept in opt_state."""

    def update(updates, count, params=None, **extra):
        k = jax.random.fold_in(key, count)
        leaves, tree = jax.tree.flatten(updates)
        noise = [jax.random.normal(kk, u.shape, u.dtype)
                 for kk, u in zip(jax.random.split(k, len(leaves)), leaves)]
        return jax.tree.unflatten(tree, [-lr * n for n in noise]), count + 1

    return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros((), jnp.int32), update)


def test_an_optimizer_closing_over_its_key_gets_each_seeds_own_key():
    res = run([0, 1, 2], lr=0.01, optimizer_fn=closure_noise, epochs=2, sharpness_iters=0)
    start = init_params(MODEL, [0, 1, 2], DATA.x_train)
    moves = [ravel_pytree(jax.tree.map(lambda p, q: p[i] - q[i], res.params, start))[0]
             for i in range(3)]
    # independent N(0, lr^2) draws: |corr| of 100s of parameters stays far below 0.5; with the
    # key(0) every seed was once built with, it was 1
    n = moves[0].size
    for a, b in ((0, 1), (0, 2), (1, 2)):
        corr = float(np.corrcoef(moves[a], moves[b])[0, 1])
        assert abs(corr) < 6 / np.sqrt(n), (a, b, corr)  # 6 sd: false failure < 1e-8
    alone = run([1], lr=0.01, optimizer_fn=closure_noise, epochs=2, sharpness_iters=0)
    np.testing.assert_allclose(ravel_pytree(jax.tree.map(lambda p: p[0], alone.params))[0],
                               ravel_pytree(jax.tree.map(lambda p: p[1], res.params))[0],
                               rtol=1e-6, atol=1e-7)


def test_a_plain_optax_transformation_trains_like_its_extra_args_twin():
    np.testing.assert_array_equal(run([0, 1], optimizer_fn=plain_sgd, epochs=1).train_loss,
                                  run([0, 1], epochs=1).train_loss)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="lr"):
        run([0], lr=-0.1)
    with pytest.raises(ValueError, match="lr"):
        run([0, 1], lr=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="batch_size"):
        run([0], batch_size=DATA.n_train + 1)
    with pytest.raises(ValueError, match="epochs"):
        run([0], epochs=0)
    with pytest.raises(ValueError, match="seeds"):
        run([])
    with pytest.raises(ValueError, match="loss_weight_scale"):
        run([0], loss_weight_scale=-1.0)
    with pytest.raises(ValueError, match="per_example_grads"):
        run([0], per_example_grads=0)
    with pytest.raises(ValueError, match="seeds"):
        run([2**32])  # would wrap to seed 0 as uint32
    with pytest.raises(TypeError, match="optimizer_fn"):
        run([0], optimizer_fn=lambda lr, key: None)
    with pytest.raises(ValueError, match="num_classes"):  # else a NaN loss, read as divergence
        train(MLP(hidden=(16,), num_classes=3), DATA, sgd, lr=0.1, batch_size=32, epochs=1)
    one_based = Dataset(DATA.x_train, DATA.y_train + 1, DATA.x_test, DATA.y_test,
                        num_classes=DATA.num_classes)  # labels 1..4 for 4 classes
    with pytest.raises(ValueError, match="data.y_train"):  # else a NaN loss, "diverged"
        train(MODEL, one_based, sgd, lr=0.1, batch_size=32, epochs=1)
    # a Dataset built directly is checked as the constructors check theirs: else a NaN input
    # reads as divergence and a short y_train is indexed past its end without a word
    nan_x = DATA.x_train.copy()
    nan_x[5, 2] = np.nan
    for data, name in ((Dataset(nan_x, DATA.y_train, DATA.x_test, DATA.y_test, 4), "x_train"),
                       (Dataset(DATA.x_train, DATA.y_train[:100], DATA.x_test, DATA.y_test, 4),
                        "y_train"),
                       (Dataset(DATA.x_train, DATA.y_train, DATA.x_test[:10], DATA.y_test, 4),
                        "y_test"),
                       (Dataset(DATA.x_train, DATA.y_train, DATA.x_test[:, :5], DATA.y_test, 4),
                        "x_test")):
        with pytest.raises(ValueError, match=f"data.{name}"):
            train(MODEL, data, sgd, lr=0.1, batch_size=32, epochs=1)
    with pytest.raises(ValueError, match="seeds"):
        init_params(MODEL, [-1], DATA.x_train)  # would wrap to seed 2^32 - 1
    with pytest.raises(ValueError, match="model"):
        make_model("resnet", 10)
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="num_samples"):  # was ignored: the file's examples
        load_dataset("npz", path="d.npz", num_samples=10)


@pytest.mark.parametrize("steps", [20, 300])  # 300: clamped to the 38 parameters
def test_lanczos_matches_the_exact_hessian(steps):
    model = MLP(hidden=(5,), num_classes=3)
    kx, kp, kv = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (20, 3))
    y = jnp.arange(20) % 3
    params = jax.jit(model.init)(kp, x)
    flat, unravel = ravel_pytree(params)
    # float32 products: a GPU's default (TF32) rounds the Hessian and each Hessian-vector
    # product at ~1e-3, far past this tolerance (both cases failed on an H100 at the default)
    with jax.default_matmul_precision("float32"):
        hess = jax.jit(jax.hessian(lambda v: mean_loss(model, unravel(v), x, y)))(flat)
        lam = jax.jit(lambda p, k: top_hessian_eigenvalue(lambda q: mean_loss(model, q, x, y),
                                                          p, k, num_iters=steps))(params, kv)
    exact = np.linalg.eigvalsh(np.asarray(hess, np.float64))
    assert abs(float(lam) - exact[-1]) <= 1e-5 * abs(exact).max()


def _spectrum_operator(eig, seed=0):
    """A symmetric float32 matrix with eigenvalues ``eig`` (random eigenvectors)."""
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eig), len(eig))))[0]
    return jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)


@pytest.mark.parametrize("eig", [
    np.ones(10),                              # isotropic: the Krylov space is 1-D
    np.r_[2.0, np.zeros(49)],                 # rank one
    np.r_[3.0, 3.0, 1.0, np.zeros(30)],       # two distinct non-zero values
    -np.ones(10), -np.ones(3),                # negative definite, isotropic
    np.r_[-4.0, -1.0, -1.0, -1.0, -0.5],      # negative definite, three distinct values
])
def test_lanczos_stops_where_the_krylov_space_is_exhausted(eig):
    """Fewer distinct eigenvalues than steps: once the space is invariant what is left is
    rounding, and normalising it into a basis vector once gave values far outside the
    spectrum (31.5 for the identity, 642 for rank one, 0 for -I in 3-D)."""
    a = _spectrum_operator(eig)
    for key in range(3):
        v0 = jax.random.normal(jax.random.key(key), (len(eig),))
        lam = jax.jit(lambda v: lanczos_top_eigenvalue(lambda u: a @ u, v, 20))(v0)
        assert float(lam) == pytest.approx(eig.max(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("shift,gap", [(1.0, 0.05), (100.0, 0.05), (1.0, 1e-3)])
def test_lanczos_finds_a_top_eigenvalue_the_start_barely_touches(shift, gap):
    """H = shift I + gap x x' in 1e5 dimensions: a random start holds ~1/sqrt(n) of x, so the
    first residual is ~gap / sqrt(n) of |H v| (1.5e-6 for the shift of 100, ~12 float32 eps):
    a stop at sqrt(eps) read 1.0 for 1.05, a restart at 64 eps 100.0 for 100.05."""
    n = 100_000
    x = jax.random.normal(jax.random.key(7), (n,))
    x = x / jnp.linalg.norm(x)
    loss = lambda w: 0.5 * shift * jnp.sum(w * w) + 0.5 * gap * jnp.dot(x, w) ** 2  # noqa: E731
    top = jax.jit(lambda k: top_hessian_eigenvalue(loss, jnp.zeros(n), k, 20))
    for key in range(3):
        assert float(top(jax.random.key(key))) == pytest.approx(shift + gap, rel=2e-6)


def test_sharpness_of_a_low_rank_hessian_in_training():
    """A linear model on two examples: its Hessian has rank <= 2 (classes - 1 per example),
    far below the 20 Lanczos steps; train's sharpness must be the exact top eigenvalue."""
    model = MLP(hidden=(), num_classes=3)
    data = teacher_student(8, 4, dim=5, num_classes=3, teacher_width=4, seed=1)
    res = train(model, data, sgd, lr=0.1, batch_size=4, epochs=1, seeds=[0, 1],
                sharpness_iters=20, sharpness_examples=2)
    x, y = jnp.asarray(data.x_train[:2]), jnp.asarray(data.y_train[:2])
    for i in range(2):
        params = jax.tree.map(lambda p: p[i], res.params)
        flat, unravel = ravel_pytree(params)
        with jax.default_matmul_precision("float32"):
            hess = jax.hessian(lambda v: mean_loss(model, unravel(v), x, y))(flat)
        exact = np.linalg.eigvalsh(np.asarray(hess, np.float64))[-1]
        assert float(res.sharpness[i]) == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("scale", [1e-30, 1e-21, 1e-18, 1e20, 1e30, 1e37])
@pytest.mark.parametrize("eig", [np.r_[3.0, np.linspace(-1.0, 1.5, 199)],  # random spectrum
                                 np.r_[3.0, np.zeros(9)],                   # rank one
                                 np.ones(30)])                              # isotropic
def test_top_eigenvalue_at_any_operator_scale(scale, eig):
    """float32 squares overflow past ~1e19 and lose their digits below ~1e-19, and XLA
    flushes subnormals to zero: with plain norms Lanczos read a spectrum scaled by 1e-18 as
    1.8e4 times its top eigenvalue and by 1e20 as 0.36 times it, power iteration gave 0 at
    1e20, and norms rescaled by the largest entry still let a rank-one operator at 1e-21 read
    92 times too high (its invariance test failing at that scale) and power iteration read 0
    at 1e38. The steps now run on the operator scaled by a power of two."""
    a = _spectrum_operator(eig * scale)
    v0 = jax.random.normal(jax.random.key(0), (len(eig),))
    lam = jax.jit(lambda v: lanczos_top_eigenvalue(lambda u: a @ u, v, 30))(v0)
    assert float(lam) / scale == pytest.approx(3.0 if eig.max() == 3 else 1.0, rel=1e-4)
    if eig.min() == -1:  # power iteration: the dominant one, with a gap to converge on
        dom, _ = jax.jit(lambda v: power_iteration(lambda u: a @ u, v, 100))(v0)
        assert float(dom) / scale == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize("top,rest", [(1e25, 1.0), (1e-20, 0.0), (1e20, 1e-15)])
def test_lanczos_when_later_products_dwarf_the_first(top, rest):
    """A start whose product is far smaller than the top eigenvalue's (here in a null space or
    all but): scaled once by |A v0|, later norms overflowed or flushed, every step read as
    invariant and the answer was a random restart's Rayleigh quotient, ~1/n of the truth."""
    d = jnp.asarray([top] + [rest] * 199, jnp.float32)
    v0 = jnp.zeros(200).at[1].set(1.0)
    lam = jax.jit(lambda v: lanczos_top_eigenvalue(lambda x: d * x, v, 20))(v0)
    assert float(lam) == pytest.approx(top, rel=1e-5)


def test_a_traced_zero_start_takes_a_random_direction():
    """Under jit a zero v0 cannot be refused: it left Lanczos a spurious Ritz value of 0 (a
    negative definite operator read 0) and the scale of a zero product (1e-30 read 53x high),
    and power iteration returned 0."""
    neg = -jnp.linspace(1.0, 3.0, 10)
    lam = jax.jit(lambda v: lanczos_top_eigenvalue(lambda x: neg * x, v, 10))(jnp.zeros(10))
    assert float(lam) == pytest.approx(-1.0, rel=1e-5)
    small = jnp.linspace(1.0, 3.0, 10) * 1e-30
    lam = jax.jit(lambda v: lanczos_top_eigenvalue(lambda x: small * x, v, 10))(jnp.zeros(10))
    assert float(lam) == pytest.approx(3e-30, rel=1e-5)
    dom, v = jax.jit(lambda v: power_iteration(lambda x: neg * x, v, 300))(jnp.zeros(10))
    assert float(dom) == pytest.approx(-3.0, rel=1e-4)


def test_a_float32_start_on_a_float64_operator_runs_in_float64():
    """The basis took the start's type: a float32 start on a float64 operator ran k = n
    steps in float32 (2.4e-7 off the exact 3), and power iteration's loop refused the float64
    products of its float32 start. Under x64 a float32 operator's products (float32 from a
    float64 start) once broke power iteration's loop too."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # jax 0.6, the oldest sgdyn supports
        from jax.experimental import enable_x64 as enable
    with enable(True):
        d = jnp.linspace(1.0, 3.0, 10, dtype=jnp.float64)
        lam = lanczos_top_eigenvalue(lambda x: d * x, jnp.ones(10, jnp.float32), 10)
        assert lam.dtype == jnp.float64 and abs(float(lam) - 3.0) <= 1e-13
        dom, _ = power_iteration(lambda x: d * x, jnp.ones(10, jnp.float32), 400)
        assert dom.dtype == jnp.float64 and float(dom) == pytest.approx(3.0, rel=1e-12)
        d32 = d.astype(jnp.float32)
        dom, _ = power_iteration(lambda x: (d32 * x).astype(jnp.float32), jnp.ones(10), 400)
        assert float(dom) == pytest.approx(3.0, rel=1e-6)
    half = jnp.linspace(1.0, 3.0, 10, dtype=jnp.bfloat16)  # eigvalsh has no bfloat16
    lam = lanczos_top_eigenvalue(lambda x: half * x, jnp.ones(10, jnp.bfloat16), 10)
    assert float(lam) == pytest.approx(3.0, rel=1e-2)


def test_power_iteration_near_the_float32_limit_and_integer_starts():
    a = jnp.diag(jnp.array([1e38, 5e37, 1e37], jnp.float32))
    for fn in (power_iteration, jax.jit(power_iteration, static_argnums=(0, 2))):
        assert float(fn(lambda u: a @ u, jnp.ones(3), 100)[0]) == pytest.approx(1e38, rel=1e-5)
    b = jnp.diag(jnp.array([10.0, 2.0, 1.0]))
    assert float(power_iteration(lambda u: b @ u, jnp.arange(1, 4), 50)[0]) == pytest.approx(10.0)
    assert float(lanczos_top_eigenvalue(lambda u: b @ u, jnp.arange(1, 4), 3)) == \
        pytest.approx(10.0, rel=1e-5)


def test_a_zero_start_vector_is_refused():
    for fn in (lanczos_top_eigenvalue, lambda m, v, k: power_iteration(m, v, k)):
        with pytest.raises(ValueError, match="v0"):
            fn(lambda u: u, jnp.zeros(6), 4)


def test_top_eigenvalue_when_the_most_negative_one_dominates():
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(40, 40)))[0]
    eig = np.concatenate([[-5.0, 2.0, 1.9], np.linspace(-1.0, 1.5, 37)])
    a = jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)
    lam = jax.jit(lambda w, k: top_hessian_eigenvalue(lambda v: 0.5 * v @ a @ v, w, k, 20))(
        jnp.ones(40), jax.random.key(1))
    assert float(lam) == pytest.approx(2.0, rel=1e-4)  # gap 2.0 / 1.9: 20 power steps miss
    dom, _ = power_iteration(lambda v: a @ v, jnp.ones(40), 200)  # by magnitude: -5
    assert float(dom) == pytest.approx(-5.0, rel=1e-3)


def test_mnist1d_is_generated_offline(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    d = mnist1d(300, seed=5)
    assert d.x_train.shape == (240, 40) and d.x_test.shape == (60, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.num_classes == 10 and set(np.unique(d.y_train)) <= set(range(10))
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    np.testing.assert_array_equal(d.x_train, mnist1d(300, seed=5).x_train)


def test_teacher_student_and_npz_round_trip(tmp_path):
    d = teacher_student(50, 20, dim=6, num_classes=3, seed=1, label_noise=0.1)
    assert d.x_train.shape == (50, 6) and d.y_test.shape == (20,) and d.num_classes == 3
    np.testing.assert_array_equal(d.y_train, teacher_student(50, 20, dim=6, num_classes=3,
                                                             seed=1, label_noise=0.1).y_train)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    e = load_npz(path)
    assert isinstance(e, Dataset) and e.name == "mine"
    np.testing.assert_array_equal(e.x_test, d.x_test)
    np.savez(tmp_path / "bad.npz", x_train=d.x_train)
    with pytest.raises(ValueError, match="lacks"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="path"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="label_noise"):
        teacher_student(10, 10, label_noise=1.0)


def test_models_shapes_and_per_example_grads():
    x = jnp.ones((7, 40))
    for model in (make_model("mlp", 10, width=8), make_model("cnn", 10, width=24)):
        params = jax.jit(model.init)(jax.random.key(0), x)
        assert model.apply(params, x).shape == (7, 10)
        g = jax.jit(lambda p: per_example_grads(model, p, x, jnp.zeros(7, jnp.int32)))(params)
        assert jax.tree.map(lambda a: a.shape[1:], g) == jax.tree.map(jnp.shape, params)
    assert isinstance(make_model("cnn", 10), CNN1D)
