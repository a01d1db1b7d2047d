"""Noise injections: documented covariances (statistically), Optax chaining, argument checks.

Statistical checks compare every entry of a sample covariance (about the known mean) with the
documented one. For Gaussian noise the entry S_jk of N samples has standard error
sqrt((C_jj C_kk + C_jk^2) / N) exactly; the tolerance z is set so that, by the normal
approximation (N = 20000) and a union bound over all m entries checked, a correct
implementation fails with probability < 1e-3: z = Phi^-1(1 - 1e-3 / (2 m)) (about 4.5-5).
The seeds are fixed, so each test is deterministic; the bound says how unlucky a seed would be.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import norm

from sgdyn.train import (MLP, add_fisher_noise, add_isotropic_noise, add_pld_noise,
                         add_reweighting_noise, fisher_factor, loss_weights, per_example_grads,
                         per_example_loss, reweighted_loss, reweighting_scale)

N = 20000
FALSE_FAIL = 1e-3


def assert_gaussian_moments(samples, mean, cov):
    """samples [N, d]; checks the d means and d(d+1)/2 covariance entries (union bound)."""
    x = np.asarray(samples, np.float64) - np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    n, d = x.shape
    m = d + d * (d + 1) // 2
    z = norm.isf(FALSE_FAIL / (2 * m))
    s = x.T @ x / n
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    slack = 1e-6 * np.abs(cov).max()  # float32 rounding where the true variance is ~0
    assert np.all(np.abs(s - cov) <= z * se + slack), np.abs(s - cov) / (se + 1e-30)
    assert np.all(np.abs(x.mean(0)) <= z * np.sqrt(np.diag(cov) / n) + slack)


PARAMS = {"w": jnp.arange(6.0).reshape(3, 2) / 7, "b": jnp.array([0.5, -1.0])}
GRAD = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2), "b": jnp.array([0.3, 0.1])}
B = 5
PEG = jax.tree.map(lambda g: jax.random.normal(jax.random.key(7), (B,) + g.shape) + g, GRAD)


def sample_updates(tx, n=N, **extra):
    """n successive updates of the same gradient: the key must advance in the state."""
    state = tx.init(PARAMS)

    def step(state, _):
        u, state = tx.update(GRAD, state, PARAMS, **extra)
        return state, ravel_pytree(u)[0]

    return np.asarray(jax.jit(lambda s: jax.lax.scan(step, s, None, length=n))(state)[1])


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def test_isotropic_covariance():
    scale = 0.3
    x = sample_updates(add_isotropic_noise(scale, key=1))
    assert_gaussian_moments(x, flat(GRAD), scale**2 * np.eye(x.shape[1]))


@pytest.mark.parametrize("centered", [False, True])
def test_fisher_covariance(centered):
    bs, bl = 4, 64
    x = sample_updates(add_fisher_noise(bs, bl, key=2, centered=centered), per_example_grads=PEG)
    g = np.stack([flat(jax.tree.map(lambda a: a[i], PEG)) for i in range(B)])  # [B, d]
    f = (g**2).mean(0) - (g.mean(0) ** 2 if centered else 0.0)
    assert_gaussian_moments(x, flat(GRAD), (1 / bs - 1 / bl) * np.diag(f))


@pytest.mark.parametrize("loss", [1.3, 0.2])  # above and below L_ref: the excess clips at 0
def test_pld_covariance(loss):
    sg, sh, ref = 0.01, 0.5, 0.5
    x = sample_updates(add_pld_noise(sg, sh, key=3, loss_ref=ref), loss=jnp.float32(loss))
    var = sg + sh * max(loss - ref, 0.0)
    assert_gaussian_moments(x, flat(GRAD), var * np.eye(x.shape[1]))


def test_reweighting_transformation_covariance():
    s = 1.7
    x = sample_updates(add_reweighting_noise(s, key=4), per_example_grads=PEG)
    g = np.stack([flat(jax.tree.map(lambda a: a[i], PEG)) for i in range(B)])
    assert_gaussian_moments(x, flat(GRAD), (s**2 / B**2) * g.T @ g)


def test_reweighted_loss_gradient_covariance_is_sgd_structure():
    """grad of (1/B) sum (1 + s z_i) l_i: mean grad L_B, Cov (s^2/B^2) sum_i g_i g_i' at fixed w."""
    model = MLP(hidden=(4,), num_classes=3)
    kx, kp = jax.random.split(jax.random.key(11))
    bx = jax.random.normal(kx, (6, 3))
    by = jnp.array([0, 1, 2, 0, 1, 2])
    params = model.init(kp, bx)
    s = reweighting_scale(2, 6)  # s^2 = b_L/b_S - 1 = 2
    assert s**2 == pytest.approx(2.0)

    def noisy_grad(key):
        g = jax.grad(lambda p: reweighted_loss(per_example_loss(model, p, bx, by), key, s))(params)
        return ravel_pytree(g)[0]

    x = np.asarray(jax.jit(jax.vmap(noisy_grad))(jax.random.split(jax.random.key(5), N)))
    peg = per_example_grads(model, params, bx, by)
    g = np.stack([flat(jax.tree.map(lambda a: a[i], peg)) for i in range(6)])
    assert_gaussian_moments(x, g.mean(0), (s**2 / 6**2) * g.T @ g)
    # with B = b_L the injected level is F (1/b_S - 1/b_L): the small-batch one, up to centring
    assert s**2 / 6 == pytest.approx(fisher_factor(2, 6))


def test_loss_weights_moments_and_determinism():
    w = loss_weights(jax.random.key(0), 50000, 0.5)
    assert w.shape == (50000,)
    # mean 1, sd 0.5: 5 standard errors each (the sd of a normal sample's sd is sd/sqrt(2n))
    assert abs(float(w.mean()) - 1) < 5 * 0.5 / np.sqrt(50000)
    assert abs(float(w.std()) - 0.5) < 5 * 0.5 / np.sqrt(2 * 50000)
    assert np.array_equal(w, loss_weights(jax.random.key(0), 50000, 0.5))
    assert np.array_equal(w, loss_weights(0, 50000, 0.5))  # int seeds accepted, as in optax


NOISES = {
    "isotropic": (lambda k: add_isotropic_noise(0.2, k), {}),
    "fisher": (lambda k: add_fisher_noise(8, 128, k), {"per_example_grads": PEG}),
    "pld": (lambda k: add_pld_noise(0.01, 0.3, k), {"loss": jnp.float32(2.0)}),
    "reweight": (lambda k: add_reweighting_noise(2.0, k), {"per_example_grads": PEG}),
}


@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("name", sorted(NOISES))
def test_chains_with_sgd_like_a_noisy_gradient(name, momentum):
    """chain(noise, sgd) == sgd fed the noisy gradient that the noise alone produces."""
    make, extra = NOISES[name]
    chained = optax.chain(make(jax.random.key(3)), optax.sgd(0.1, momentum=momentum))
    noise, sgd = make(jax.random.key(3)), optax.sgd(0.1, momentum=momentum)
    cs, ns, ss = chained.init(PARAMS), noise.init(PARAMS), sgd.init(PARAMS)
    update = jax.jit(lambda g, s, p: chained.update(g, s, p, **extra))
    # float32 products: on a GPU the default (TF32) may round the reweighting's contraction
    # differently in the jitted chain and the eager reference
    with jax.default_matmul_precision("float32"):
        for _ in range(3):
            u, cs = update(GRAD, cs, PARAMS)
            g_noisy, ns = noise.update(GRAD, ns, PARAMS, **extra)
            u_ref, ss = sgd.update(g_noisy, ss, PARAMS)
            np.testing.assert_allclose(flat(u), flat(u_ref), rtol=1e-6, atol=1e-7)
    # and the noise is there: the same three steps of sgd on the clean gradient differ
    clean = sgd.init(PARAMS)
    for _ in range(3):
        u_clean, clean = sgd.update(GRAD, clean, PARAMS)
    assert not np.allclose(flat(u), flat(u_clean))


@pytest.mark.parametrize("make", [lambda: add_fisher_noise(8, 128, 0),
                                  lambda: add_reweighting_noise(2.0, 0)])
def test_per_example_grads_without_their_example_axis_are_refused(make):
    tx = make()
    state = tx.init(PARAMS)
    for bad in (GRAD,  # the batch gradient itself: its first axis would read as examples
                {"w": PEG["w"], "b": PEG["b"][:3]},  # two batch sizes
                {"w": PEG["w"]}):  # another structure
        with pytest.raises(ValueError, match="per_example_grads"):
            tx.update(GRAD, state, PARAMS, per_example_grads=bad)


def test_key_forms_and_value_alias():
    a = add_pld_noise(0.1, 0.1, 0).update(GRAD, add_pld_noise(0.1, 0.1, 0).init(PARAMS), loss=1.0)
    tx = add_pld_noise(0.1, 0.1, jax.random.key(0))
    b = tx.update(GRAD, tx.init(PARAMS), value=1.0)  # Optax's name for the loss value
    np.testing.assert_array_equal(flat(a[0]), flat(b[0]))
    for legacy in (jax.random.PRNGKey(0), np.asarray(jax.random.PRNGKey(0))):  # numpy's too
        tx = add_pld_noise(0.1, 0.1, legacy)
        c = tx.update(GRAD, tx.init(PARAMS), loss=1.0)
        np.testing.assert_array_equal(flat(a[0]), flat(c[0]))


def test_missing_extra_args_and_bad_arguments():
    for bad_key in (1.5, "0", True, jnp.array([1.0, 2.0]), np.arange(3)):
        with pytest.raises(TypeError, match="key"):
            add_isotropic_noise(0.1, key=bad_key).init(PARAMS)
    with pytest.raises(ValueError, match="loss= must be the batch loss"):  # per-example losses
        tx = add_pld_noise(0.1, 0.1, 0)
        tx.update(GRAD, tx.init(PARAMS), loss=jnp.ones(3))
    for make in (lambda: add_isotropic_noise(jnp.ones(3)), lambda: add_pld_noise([0.1, 0.2], 0.1),
                 lambda: add_reweighting_noise(np.ones(2))):
        with pytest.raises(ValueError, match="must be one number"):
            make()
    with pytest.raises(ValueError, match=r"per_example_grads=True"):  # what train() takes
        tx = add_fisher_noise(8, 64, 0)
        tx.update(GRAD, tx.init(PARAMS), loss=1.0)
    with pytest.raises(ValueError, match="loss"):
        tx = add_pld_noise(0.1, 0.1, 0)
        tx.update(GRAD, tx.init(PARAMS))
    with pytest.raises(ValueError, match="per_example_grads"):
        tx = add_fisher_noise(8, 64, 0)
        tx.update(GRAD, tx.init(PARAMS))
    with pytest.raises(ValueError, match="per_example_grads"):
        tx = add_fisher_noise(8, 64, 0)
        tx.update(GRAD, tx.init(PARAMS), per_example_grads={"w": PEG["w"]})
    with pytest.raises(ValueError, match="scale"):
        add_isotropic_noise(-1.0)
    with pytest.raises(ValueError, match="small_batch"):
        add_fisher_noise(128, 8)
    with pytest.raises(ValueError, match="large_batch"):
        fisher_factor(8, 0)
    with pytest.raises(ValueError, match="sigma_h"):
        add_pld_noise(0.1, float("nan"))
    with pytest.raises(ValueError, match="scale"):
        loss_weights(0, 4, -0.5)
    with pytest.raises(ValueError, match="per_example_losses"):
        reweighted_loss(jnp.ones((2, 2)), 0, 1.0)


@pytest.mark.parametrize("make", [lambda: add_fisher_noise(8, 64, 0),
                                  lambda: add_reweighting_noise(1.0, 0)],
                         ids=["fisher", "reweighting"])
def test_an_injection_under_optax_masked_noises_only_the_unmasked_leaves(make):
    """optax.masked hands the injection masked updates but the whole per_example_grads (once
    refused as another structure): the unmasked leaves get what the injection alone gives
    them, the masked ones nothing."""
    tx = optax.masked(make(), {"w": True, "b": False})
    masked, _ = tx.update(GRAD, tx.init(PARAMS), PARAMS, per_example_grads=PEG)
    alone = make()
    w_only, _ = alone.update({"w": GRAD["w"]}, alone.init({"w": PARAMS["w"]}),
                             per_example_grads={"w": PEG["w"]})
    np.testing.assert_array_equal(masked["w"], w_only["w"])
    assert not np.array_equal(masked["w"], GRAD["w"])
    np.testing.assert_array_equal(masked["b"], GRAD["b"])
