"""Gradient-noise injections for large-batch training, as Optax transformations.

A batch-b_L gradient carries SGD noise of covariance C(w)/b_L; a batch-b_S one carries C(w)/b_S.
Adding independent noise of covariance C(w) (1/b_S - 1/b_L) to the large-batch gradient restores
the small-batch level (THEORY.md section 6). Each injection below approximates C differently.
Covariances are of the *gradient* (units loss^2 / parameter^2, loss in nats), before any learning
rate: chain them *before* ``optax.sgd`` so the noise passes through momentum like SGD's own::

    tx = optax.chain(add_fisher_noise(64, 2048, key), optax.sgd(lr, momentum=0.9))
    updates, state = tx.update(grads, state, params, loss=l, per_example_grads=g_i)

As in ``optax.add_noise`` the PRNG key given at construction lives in the state (``rng_key``) and
advances on each update. Extra arguments are keywords, passed by ``optax.chain`` to every member;
``loss`` (Optax's ``value`` is accepted too) is the unweighted batch loss L_batch(w), and
``per_example_grads`` is a pytree like the gradient with a leading example axis [B].
Under ``optax.masked`` an injection noises the unmasked leaves only (it masks
``per_example_grads`` as the updates are masked).
Independent injections add their covariances when chained: give each its own key (e.g.
``k1, k2 = jax.random.split(key)``). Two built with the same key draw the same z, and their
standard deviations add instead of their variances.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .. import _checks


class NoiseState(NamedTuple):
    """An injection's state: the PRNG key of its next draw (advanced on every update)."""

    rng_key: jax.Array


def _canonical_key(key) -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,) and key.dtype == np.uint32:
        return jax.random.wrap_key_data(key)  # legacy uint32 key (jax.random.PRNGKey)
    integer = isinstance(key, int) and not isinstance(key, bool) or (
        hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jnp.integer) and jnp.ndim(key) == 0)
    if not integer:
        raise TypeError(f"key must be a jax.random.key, a legacy uint32 key or an integer seed, "
                        f"got {key!r}")
    return jax.random.key(key)


def _check(fn, name, value):
    if _checks.is_concrete(value):  # under jit/vmap a traced value is the caller's business
        fn(name, value)
    return value


def _masked(x) -> bool:
    return isinstance(x, getattr(optax, "MaskedNode", ()))


def _masked_like(g, updates):
    """``g`` with ``optax.masked``'s empty nodes wherever ``updates`` has one: ``masked`` hands
    an injection the updates masked but the extra arguments whole."""
    if not any(map(_masked, jax.tree.leaves(updates, is_leaf=_masked))):
        return g
    try:
        return jax.tree.map(lambda u, gi: u if _masked(u) else gi, updates, g, is_leaf=_masked)
    except ValueError:  # another structure: _per_example names it
        return g


def _per_example(name, g, updates):
    """(B, g): the batch size B of ``per_example_grads`` ``g``, a pytree like ``updates`` with
    a leading example axis [B] on every leaf (masked like ``updates`` under ``optax.masked``);
    a ValueError naming it otherwise (the batch gradient itself, passed by mistake, would read
    its first axis as examples)."""
    g = _masked_like(g, updates)
    if jax.tree.structure(g) != jax.tree.structure(updates):
        raise ValueError(f"{name}: per_example_grads must have the structure of the gradient")
    batches = set()
    for gi, u in zip(jax.tree.leaves(g), jax.tree.leaves(updates)):
        if gi.ndim != u.ndim + 1 or gi.shape[1:] != u.shape:
            raise ValueError(f"{name}: per_example_grads must have shape [B, *shape] for a "
                             f"gradient leaf of shape {u.shape}, got {gi.shape}")
        batches.add(gi.shape[0])
    if len(batches) > 1 or 0 in batches:
        raise ValueError(f"{name}: per_example_grads must have one batch size B >= 1 on every "
                         f"leaf, got {sorted(batches)}")
    return (batches.pop() if batches else 0), g


def _require(name, extra, arg):
    """``extra[arg]``, or a ValueError saying that ``name`` needs it (and how train gives it)."""
    if extra.get(arg) is None:
        raise ValueError(f"{name} needs the extra argument {arg}=... in update()"
                         + (" (in sgdyn.train.train: per_example_grads=True)"
                            if arg == "per_example_grads" else ""))
    return extra[arg]


def _noisy(name, key, std_fn, needs=()):
    """Transformation adding std * N(0, I) to the updates; std_fn(updates, extra) returns the
    standard deviation as a scalar (same for every coordinate) or a pytree like the updates."""

    def init(params):
        del params
        return NoiseState(rng_key=_canonical_key(key))

    def update(updates, state, params=None, **extra):
        del params
        if extra.get("loss") is None and extra.get("value") is not None:
            extra["loss"] = extra["value"]
        for arg in needs:
            _require(name, extra, arg)
        rng_key, sample_key = jax.random.split(state.rng_key)
        # one draw for the whole flattened tree: one PRNG call to compile instead of one per leaf
        flat, unravel = ravel_pytree(updates)
        z = jax.random.normal(sample_key, flat.shape, flat.dtype)
        std = std_fn(updates, extra)
        if not (isinstance(std, jax.Array) and std.ndim == 0):
            std = ravel_pytree(std)[0]
        return unravel(flat + (std * z).astype(flat.dtype)), NoiseState(rng_key=rng_key)

    return optax.GradientTransformationExtraArgs(init, update)


def add_isotropic_noise(scale, key=0) -> optax.GradientTransformationExtraArgs:
    """Adds xi ~ N(0, scale^2 I): Cov[xi] = scale^2 I, ``scale`` in gradient units (loss/param).

    The state-independent baseline: like ``optax.add_noise`` without the annealing.
    """
    _check(_checks.nonnegative, "scale", _check(_checks.scalar, "scale", scale))
    return _noisy("add_isotropic_noise", key, lambda u, e: jnp.asarray(scale, jnp.float32))


def fisher_factor(small_batch: int, large_batch: int) -> float:
    """1/b_S - 1/b_L: the covariance a batch-b_L gradient lacks relative to batch b_S, per unit
    of the per-example covariance C."""
    _checks.positive_int("small_batch", small_batch)
    _checks.positive_int("large_batch", large_batch)
    if small_batch > large_batch:
        raise ValueError(f"small_batch must be <= large_batch ({large_batch}), got {small_batch}")
    return 1.0 / small_batch - 1.0 / large_batch


def add_fisher_noise(small_batch: int, large_batch: int, key=0, *, centered: bool = False):
    """Diagonal empirical-Fisher noise: Cov[xi] = (1/b_S - 1/b_L) diag(F),

        F_jj = (1/B) sum_i g_ij^2        (``centered``: minus ((1/B) sum_i g_ij)^2)

    with g_i = grad l_i(w) the ``per_example_grads`` of the current batch (size B, any), units
    (loss/param)^2. The uncentred F is the "empirical Fisher"; centring gives SGD's C exactly
    (on the diagonal). Needs ``per_example_grads=`` in ``update``.
    """
    factor = fisher_factor(small_batch, large_batch)

    def std(updates, extra):
        _, g = _per_example("add_fisher_noise", extra["per_example_grads"], updates)

        def leaf(gi):
            f = jnp.mean(jnp.square(gi), axis=0)
            if centered:
                f = jnp.maximum(f - jnp.square(jnp.mean(gi, axis=0)), 0.0)
            return jnp.sqrt(factor * f)

        return jax.tree.map(leaf, g)

    return _noisy("add_fisher_noise", key, std, needs=("per_example_grads",))


def add_pld_noise(sigma_g, sigma_h, key=0, *,
                  loss_ref=0.0) -> optax.GradientTransformationExtraArgs:
    """Power-law-dynamic (loss form) noise: Cov[xi] = (sigma_g + sigma_h max(L_batch - L_ref, 0)) I.

    ``sigma_g`` in (loss/param)^2, ``sigma_h`` in (loss/param)^2 per nat of loss, ``loss_ref`` in
    nats (the loss at the minimum, 0 for a network that can fit its data). The clip at 0 keeps
    the variance >= sigma_g when the batch loss dips under L_ref. Needs ``loss=`` in ``update``.
    """
    for arg, value in (("sigma_g", sigma_g), ("sigma_h", sigma_h)):
        _check(_checks.nonnegative, arg, _check(_checks.scalar, arg, value))
    _check(_checks.scalar, "loss_ref", loss_ref)

    def std(updates, extra):
        if jnp.ndim(extra["loss"]) != 0:  # per-example losses would scale coordinates instead
            raise ValueError(f"add_pld_noise: loss= must be the batch loss, one number, got "
                             f"shape {jnp.shape(extra['loss'])}")
        excess = jnp.maximum(jnp.asarray(extra["loss"], jnp.float32) - loss_ref, 0.0)
        return jnp.sqrt(sigma_g + sigma_h * excess)

    return _noisy("add_pld_noise", key, std, needs=("loss",))


def reweighting_scale(small_batch: int, large_batch: int) -> float:
    """s = sqrt(b_L/b_S - 1): reweighting noise (s^2/B^2) sum g_i g_i' with B = b_L then equals
    F (1/b_S - 1/b_L), the batch-b_S level (up to centring)."""
    fisher_factor(small_batch, large_batch)
    return float((large_batch / small_batch - 1.0) ** 0.5)


def loss_weights(key, batch_size: int, scale) -> jax.Array:
    """Per-example weights 1 + s z_i, z_i ~ N(0, 1) iid, shape [batch_size] (Wu et al. 2020)."""
    _checks.positive_int("batch_size", batch_size)
    _check(_checks.nonnegative, "scale", _check(_checks.scalar, "scale", scale))
    return 1.0 + scale * jax.random.normal(_canonical_key(key), (batch_size,))


def reweighted_loss(per_example_losses, key, scale) -> jax.Array:
    """Multiplicative-noise objective (1/B) sum_i (1 + s z_i) l_i(w), z_i ~ N(0, 1).

    Its gradient is g_B + xi with xi = (s/B) sum_i z_i g_i: mean 0 and, given the batch and w,
    Cov[xi] = (s^2/B^2) sum_i g_i g_i'  (units (loss/param)^2) -- SGD's own state-dependent
    covariance, full matrix, for one ordinary backward pass. It acts on the loss, so it composes
    with any Optax chain by differentiating this instead of the mean loss; chained
    gradient-level injections then add their (independent) covariances. Draw a fresh ``key``
    every step (e.g. split from the training loop's key).
    """
    losses = jnp.asarray(per_example_losses)
    if losses.ndim != 1:
        raise ValueError(f"per_example_losses must be 1-D [B], got shape {losses.shape}")
    return jnp.mean(loss_weights(key, losses.shape[0], scale) * losses)


def add_reweighting_noise(scale, key=0) -> optax.GradientTransformationExtraArgs:
    """The same noise as :func:`reweighted_loss`, built from ``per_example_grads`` instead:
    adds xi = (s/B) sum_i z_i g_i, Cov[xi] = (s^2/B^2) sum_i g_i g_i'. For use where per-example
    gradients exist anyway; otherwise differentiate :func:`reweighted_loss` (no extra cost)."""
    _check(_checks.nonnegative, "scale", _check(_checks.scalar, "scale", scale))

    def init(params):
        del params
        return NoiseState(rng_key=_canonical_key(key))

    def update(updates, state, params=None, **extra):
        del params
        g = _require("add_reweighting_noise", extra, "per_example_grads")
        batch, g = _per_example("add_reweighting_noise", g, updates)
        rng_key, sample_key = jax.random.split(state.rng_key)
        z = jax.random.normal(sample_key, (batch,))
        noise = jax.tree.map(lambda gi: (scale / batch) * jnp.tensordot(z, gi, axes=1), g)
        return jax.tree.map(lambda u, n: u + n.astype(u.dtype), updates, noise), NoiseState(rng_key)

    return optax.GradientTransformationExtraArgs(init, update)
