"""Jitted minibatch training of a Flax classifier, several seeds at once.

One compiled call runs one epoch for every seed: ``jax.vmap`` over seeds of a ``lax.scan`` over
the epoch's minibatches (a fresh permutation per epoch, sampling without replacement, the last
n mod b examples dropped; ``shuffle.permutation`` is ``jax.random.permutation`` bit for bit, from
cheaper sorts). Each seed s draws everything from ``jax.random.key(s)``:
initial weights, the optimizer's noise key, the minibatch order, the loss-reweighting draws and
the sharpness start vector, so a seed gives the same numbers alone or inside a vmap.

A step whose batch loss or new parameters are not finite (NaN or inf) is not applied: that seed's
parameters and optimizer state freeze at their last finite values, it is marked diverged (with
the global step index, and a RuntimeWarning names it) and the other seeds carry on. So is a seed
whose loss over the training or the test set is not finite after an epoch (finite weights whose
logits overflow, on examples no batch of the epoch had seen them on), at the step that would
have followed: its weights freeze there.

Checking every step costs a pass over the weights per step (11-18% of a batch-32 MNIST-1D step),
so an epoch first runs unchecked, and is run again with the check only when a seed's losses or
final weights are not finite. That finds every divergence: Optax applies updates by addition,
so weights that turn inf or NaN stay so to the end of the epoch. Seeds that diverged in an
earlier epoch keep their frozen weights, which is what the checked run would give them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import _checks
from .._tuned_jit import tuned_jit
from . import models
from .data import Dataset, check_dataset
from .noise import reweighted_loss
from .sharpness import top_hessian_eigenvalue
from .shuffle import permutation

OptimizerFn = Callable[[jax.Array, jax.Array], optax.GradientTransformation]


class TrainState(NamedTuple):
    """One seed's training state (a leading seed axis on every leaf under vmap)."""

    params: object
    opt_state: object
    key: jax.Array
    diverged: jax.Array  # bool
    diverged_step: jax.Array  # int32, -1 while finite
    step: jax.Array  # int32, steps taken (frozen steps included)
    noise_key: jax.Array  # the key optimizer_fn(lr, key) is built with, every epoch


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Per-epoch metrics have shape [epochs, seeds] (evaluated after each epoch, full data);
    losses in nats, accuracies in [0, 1], sharpness (top Hessian eigenvalue of the training loss
    at the final weights) in nats per parameter^2, NaN when not computed."""

    seeds: np.ndarray
    lr: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    sharpness: np.ndarray
    params: object
    steps_per_epoch: int
    wall_time_s: float

    def final(self) -> dict:
        """Last-epoch metrics per seed, plus the generalisation gap train_acc - test_acc."""
        keys = ("train_loss", "train_acc", "test_loss", "test_acc")
        out = {k: getattr(self, k)[-1] for k in keys}
        out["gap"] = out["train_acc"] - out["test_acc"]
        out["sharpness"] = self.sharpness
        out["diverged"] = self.diverged
        return out


def _select(pred, new, old):
    """Elementwise ``where`` over pytrees, including typed PRNG-key leaves."""

    def sel(a, b):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = jnp.where(pred, jax.random.key_data(a), jax.random.key_data(b))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jnp.where(pred, a, b)

    return jax.tree.map(sel, new, old)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


_select_seeds = jax.vmap(_select)  # one predicate per seed (the leading axis of every leaf)


@jax.jit
def _flag_nonfinite(diverged, diverged_step, step, *losses):
    """(diverged, diverged_step) with the seeds whose ``losses`` (over whole data sets, after an
    epoch) are not finite marked diverged at ``step``. The epoch's checks see a batch's loss
    only before its step: weights left by the last step, or whose logits overflow only on
    examples outside the batches, gave NaN losses and were never flagged."""
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(loss) for loss in losses])
    new = ~diverged & ~finite
    return diverged | new, jnp.where(new, step, diverged_step)


def _seed_keys(seed):
    """(init, optimizer noise, loop, sharpness) keys of one seed, four independent streams."""
    return jax.random.split(jax.random.key(seed), 4)


# On a CPU the initialisers (Threefry and the truncated normal's inverse erf, under vmap) are
# compiled with LLVM at -O1 instead of -O3: 0.3-0.5 s against 0.9-2.6 s on a 2-core CPU for
# the MLPs and CNNs tried, with the same weights bit for bit (tests/test_train_loop.py). They
# run once per call, so the slower code costs nothing measurable.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


@functools.lru_cache(maxsize=8)
def _param_init(model):
    # separate from the optimizer so that its (slow to compile) initialisers compile once per model
    init = jax.vmap(lambda seed, x: model.init(_seed_keys(seed)[0], x), in_axes=(0, None))
    return tuned_jit(init, INIT_COMPILER_OPTIONS, jax.default_backend())


def _checked_seeds(seeds) -> np.ndarray:
    """``seeds`` as uint32, or a ValueError: each a non-negative integer below 2^32 (larger
    ones, or negative ones, would wrap onto other seeds)."""
    seeds = np.atleast_1d(np.asarray(seeds))
    if (seeds.ndim != 1 or seeds.size == 0 or not np.issubdtype(seeds.dtype, np.integer)
            or seeds.min() < 0 or seeds.max() >= 2**32):
        raise ValueError(f"seeds must be a non-empty list of integers in [0, 2^32), "
                         f"got {seeds.tolist()}")
    return seeds.astype(np.uint32)


def init_params(model, seeds: Sequence[int], x):
    """Initial weights of every seed, stacked on a leading axis (as :func:`train` draws them)."""
    return _param_init(model)(jnp.asarray(_checked_seeds(seeds)), jnp.asarray(x[:1]))


def _optimizer(optimizer_fn, lr, key):
    # every update gets loss= and value= (and per_example_grads=): a plain Optax
    # transformation, which takes no extra arguments, is wrapped to ignore them
    tx = optimizer_fn(lr, key)
    if isinstance(tx, optax.GradientTransformation):
        return optax.with_extra_args_support(tx)
    if callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None)):
        # optax.MultiSteps is no GradientTransformation, but its update takes the extras
        return optax.GradientTransformationExtraArgs(tx.init, tx.update)
    raise TypeError(f"optimizer_fn(lr, key) must return an Optax GradientTransformation, "
                    f"got {type(tx).__name__}")


@functools.lru_cache(maxsize=32)
def _compiled(model, optimizer_fn, batch_size, steps, per_example, weight_scale):
    """Jitted (init, epoch) for one configuration; cached so repeated runs skip compilation."""

    def init_one(params, seed, lr):
        _, k_noise, k_loop, _ = _seed_keys(seed)
        opt_state = _optimizer(optimizer_fn, lr, k_noise).init(params)
        return TrainState(params, opt_state, k_loop, jnp.array(False), jnp.array(-1, jnp.int32),
                          jnp.array(0, jnp.int32), k_noise)

    def epoch_one(state, lr, x, y, checked):
        # rebuilt with the seed's own key: sgdyn's injections keep theirs in opt_state, but a
        # transformation may also close over the key it is built with
        opt = _optimizer(optimizer_fn, lr, state.noise_key)
        start = state
        key, k_perm = jax.random.split(state.key)
        order = permutation(k_perm, x.shape[0])[: steps * batch_size]

        def step(s: TrainState, idx):
            k_next, k_w = jax.random.split(s.key)
            xb, yb = x[idx], y[idx]

            def objective(p):
                losses = models.per_example_loss(model, p, xb, yb)
                mean = jnp.mean(losses)
                obj = reweighted_loss(losses, k_w, weight_scale) if weight_scale > 0 else mean
                return obj, mean

            (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(s.params)
            extra = {"loss": loss, "value": loss}  # value: Optax's name (polyak_sgd reads it)
            if per_example:
                # the batch is already a random draw, so its first m rows are a random subset
                m = per_example
                extra["per_example_grads"] = models.per_example_grads(model, s.params, xb[:m],
                                                                      yb[:m])
            updates, opt_state = opt.update(grads, s.opt_state, s.params, **extra)
            params = optax.apply_updates(s.params, updates)
            if not checked:
                return s._replace(params=params, opt_state=opt_state, key=k_next,
                                  step=s.step + 1), loss
            ok = ~s.diverged & jnp.isfinite(loss) & _all_finite(params)
            return TrainState(
                _select(ok, params, s.params),
                _select(ok, opt_state, s.opt_state),
                k_next,
                s.diverged | ~ok,
                jnp.where(~s.diverged & ~ok, s.step, s.diverged_step),
                s.step + 1,
                s.noise_key,
            ), loss

        state = state._replace(key=key)
        state, losses = jax.lax.scan(step, state, order.reshape(steps, batch_size))
        if checked:
            return state
        # a seed frozen before this epoch stays frozen, as in the checked run
        state = state._replace(params=_select(start.diverged, start.params, state.params),
                               opt_state=_select(start.diverged, start.opt_state,
                                                 state.opt_state))
        finite = jnp.all(jnp.isfinite(losses)) & _all_finite(state.params)
        return state, ~start.diverged & ~finite

    def epochs(checked, **jit_kw):
        return jax.jit(jax.vmap(functools.partial(epoch_one, checked=checked),
                                in_axes=(0, 0, None, None)), **jit_kw)

    init = jax.jit(jax.vmap(init_one))
    # the unchecked epoch keeps its input, from which a divergent epoch is run again
    return init, epochs(False), epochs(True, donate_argnums=0)


def _epoch(unchecked, checked, state, lr, x, y):
    """One epoch of every seed, unchecked; the seeds that diverged in it take the checked
    epoch's result instead, run again from ``state`` (the others keep their unchecked one)."""
    new, diverged = unchecked(state, lr, x, y)
    if bool(jnp.any(diverged)):
        new = _select_seeds(diverged, checked(state, lr, x, y), new)
    return new


@functools.lru_cache(maxsize=8)
def _evaluators(model, sharpness_iters):
    def metrics(params, x, y):
        return models.mean_loss(model, params, x, y), models.accuracy(model, params, x, y)

    def sharp(params, seeds, x, y):
        def one(args):
            p, seed = args
            key = _seed_keys(seed)[3]  # a stream no training draw uses
            return top_hessian_eigenvalue(lambda q: models.mean_loss(model, q, x, y), p, key,
                                          sharpness_iters)

        return jax.lax.map(one, (params, seeds))  # sequential: one Lanczos basis in memory

    return (jax.jit(jax.vmap(metrics, in_axes=(0, None, None))),
            jax.jit(sharp) if sharpness_iters > 0 else None)


def _check_args(model, data, optimizer_fn, lr, batch_size, epochs, seeds, loss_weight_scale,
                sharpness_iters, sharpness_examples, per_example_grads):
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a sgdyn.train.Dataset, got {type(data).__name__}")
    if not callable(optimizer_fn):
        raise TypeError("optimizer_fn must be callable as optimizer_fn(lr, key)")
    _checks.positive_int("batch_size", batch_size)
    if batch_size > data.n_train:
        raise ValueError(f"batch_size must be <= the number of training examples "
                         f"({data.n_train}), got {batch_size}")
    _checks.positive_int("epochs", epochs)
    seeds = _checked_seeds(seeds)
    lr = np.asarray(_checks.positive("lr", lr), np.float32)
    if lr.ndim > 1 or (lr.ndim == 1 and lr.shape != seeds.shape):
        raise ValueError(f"lr must be a number or a list of one per seed ({seeds.size}), "
                         f"got {lr.tolist()}")
    lr = np.broadcast_to(lr, seeds.shape)
    _checks.nonnegative("loss_weight_scale", loss_weight_scale)
    if isinstance(sharpness_iters, bool) or not isinstance(sharpness_iters, (int, np.integer)) \
            or sharpness_iters < 0:
        raise ValueError(f"sharpness_iters must be an integer >= 0, got {sharpness_iters!r}")
    if not isinstance(per_example_grads, (bool, int, np.integer)) or (
            not isinstance(per_example_grads, bool) and per_example_grads < 1):
        raise ValueError(f"per_example_grads must be True, False or an integer >= 1, "
                         f"got {per_example_grads!r}")
    if sharpness_examples is not None:
        _checks.positive_int("sharpness_examples", sharpness_examples)
    check_dataset(data)
    width = _output_width(model, data.x_train.shape[1:])
    if width != data.num_classes:  # else labels past the logits read as a NaN loss, "diverged"
        raise ValueError(f"model must output one logit per class: {width} logits against "
                         f"data.num_classes={data.num_classes} (set the model's num_classes)")
    return seeds, np.array(lr)


@functools.lru_cache(maxsize=32)
def _output_width(model, example_shape):
    """Logits per example of ``model`` on inputs of ``example_shape`` (shapes only, no FLOPs)."""
    x = jax.ShapeDtypeStruct((1, *example_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.eval_shape(model.apply, params, x).shape[-1]


def seed_mesh(devices=None, n_seeds: int | None = None) -> Mesh | None:
    """A 1-D mesh named ``"seeds"`` over ``devices`` (default: every device of this process),
    or over its first ``n_seeds`` when there are fewer seeds than devices (a device with only
    padding to run would add work and cross-device traffic and gain nothing); None where that
    leaves a single device."""
    devices = jax.local_devices() if devices is None else list(devices)
    if n_seeds is not None:
        devices = devices[:max(1, int(n_seeds))]
    return Mesh(np.asarray(devices), ("seeds",)) if len(devices) > 1 else None


def train(model, data: Dataset, optimizer_fn: OptimizerFn, *, lr, batch_size: int, epochs: int,
          seeds: Sequence[int] = (0,), per_example_grads: bool | int = False,
          loss_weight_scale: float = 0.0, sharpness_iters: int = 20,
          sharpness_examples: int | None = None, shard_seeds: bool = True) -> TrainResult:
    """Train ``model`` on ``data`` for ``epochs`` epochs of minibatch steps, all seeds together.

    ``optimizer_fn(lr, key)`` builds the Optax transformation (``lr`` may be a tracer; any noise
    injection takes ``key``, each seed's own; split it for several injections, which would
    otherwise draw the same noise), e.g. ``def opt(lr, k): return optax.chain(
    add_isotropic_noise(1e-2, k), optax.sgd(lr))``; any Optax transformation works (the extra
    arguments below are passed to those that take them). Compiled programs are cached per
    ``optimizer_fn`` object: pass the same function to every call (a fresh lambda each call
    compiles again, about a second). ``lr``: one value or one per seed. Each update receives
    ``loss=`` and ``value=`` (both the unweighted batch loss, at the weights before the step:
    ``value`` is Optax's name, read by ``optax.polyak_sgd`` and
    ``optax.contrib.reduce_on_plateau``) and, with ``per_example_grads=True``,
    ``per_example_grads=`` (an integer m: those of the first m examples of the random batch only,
    B/m x less memory; an injection built from them then sees a batch of m).
    ``loss_weight_scale`` s > 0 differentiates the reweighted loss (1/B) sum (1 + s z_i) l_i.
    Sharpness uses the first ``sharpness_examples`` training examples (all by default).
    With several devices (and ``shard_seeds``), the seeds are split over them, at most one
    device per seed (``seed_mesh``); a seed's numbers do not depend on where it runs, up to
    float rounding.
    On a CPU, give JAX one device per core (``JAX_NUM_CPU_DEVICES``, set before JAX starts)
    to train the seeds in parallel: vmap alone gains little there (see the README).
    """
    seeds, lr = _check_args(model, data, optimizer_fn, lr, batch_size, epochs, seeds,
                            loss_weight_scale, sharpness_iters, sharpness_examples,
                            per_example_grads)
    n_seeds = seeds.size
    mesh = seed_mesh(n_seeds=n_seeds) if shard_seeds else None
    if mesh is not None:  # pad with copies of the last seed to a multiple of the device count
        pad = -n_seeds % mesh.devices.size
        seeds, lr = np.pad(seeds, (0, pad), mode="edge"), np.pad(lr, (0, pad), mode="edge")
    t0 = time.perf_counter()
    steps = data.n_train // batch_size
    per_example = 0 if per_example_grads is False else (
        batch_size if per_example_grads is True else min(int(per_example_grads), batch_size))
    init, unchecked, checked = _compiled(model, optimizer_fn, int(batch_size), steps,
                                         per_example, float(loss_weight_scale))
    metrics, sharp = _evaluators(model, int(sharpness_iters))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xt, yt = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    lr_dev = jnp.asarray(lr)
    state = init(init_params(model, seeds, x), jnp.asarray(seeds), lr_dev)
    if mesh is not None:  # each device trains its own seeds; jit partitions the vmap accordingly
        split = NamedSharding(mesh, PartitionSpec("seeds"))
        state, lr_dev = jax.device_put((state, lr_dev), split)
    hist = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    for _ in range(epochs):
        state = _epoch(unchecked, checked, state, lr_dev, x, y)
        for split, (xs, ys) in (("train", (x, y)), ("test", (xt, yt))):
            loss, acc = metrics(state.params, xs, ys)
            hist[f"{split}_loss"].append(loss)
            hist[f"{split}_acc"].append(acc)
        diverged, diverged_step = _flag_nonfinite(state.diverged, state.diverged_step, state.step,
                                                  hist["train_loss"][-1], hist["test_loss"][-1])
        state = state._replace(diverged=diverged, diverged_step=diverged_step)
    if sharp is not None:
        m = data.n_train if sharpness_examples is None else min(sharpness_examples, data.n_train)
        sharpness = np.asarray(sharp(state.params, jnp.asarray(seeds), x[:m], y[:m]))
    else:
        sharpness = np.full(seeds.shape, np.nan, np.float32)
    hist = {k: np.asarray(jnp.stack(v)) for k, v in hist.items()}
    if seeds.size > n_seeds:  # drop the padding seeds
        keep = slice(0, n_seeds)
        hist = {k: v[:, keep] for k, v in hist.items()}
        seeds, lr, sharpness = seeds[keep], lr[keep], sharpness[keep]
        state = jax.tree.map(lambda a: a[keep], state)
    diverged = np.asarray(state.diverged)
    if diverged.any():
        warnings.warn(f"seeds {seeds[diverged].tolist()} diverged (non-finite loss or weights) at "
                      f"steps {np.asarray(state.diverged_step)[diverged].tolist()}; their weights "
                      f"are frozen there", RuntimeWarning, stacklevel=2)
    return TrainResult(seeds=seeds, lr=lr, **hist, diverged=diverged,
                       diverged_step=np.asarray(state.diverged_step), sharpness=sharpness,
                       params=jax.device_get(state.params), steps_per_epoch=steps,
                       wall_time_s=time.perf_counter() - t0)
