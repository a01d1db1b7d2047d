"""Small Flax (linen) classifiers and the per-example cross-entropy loss they are trained on.

Linen modules are stateless, hashable descriptions (the parameters live in a separate pytree), so
one module serves every seed of a ``jax.vmap`` and can be a static argument of a jitted function.
Both models accept inputs [n, length] or [n, length, channels] and return logits [n, classes].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .. import _checks


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened input."""

    hidden: Sequence[int] = (100, 100)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN1D(nn.Module):
    """Strided 1-D convolutions (each halves the length), then a dense read-out."""

    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        if x.ndim == 2:
            x = x[..., None]  # [n, length] -> [n, length, 1 channel]
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (self.kernel_size,), strides=(2,), padding="SAME")(x))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def make_model(name: str, num_classes: int, *, width: int = 100, depth: int = 2) -> nn.Module:
    """'mlp': ``depth`` hidden layers of ``width`` units; 'cnn': ``depth`` + 1 conv layers of
    ``width`` // 3 channels (at least 8), so 'width' scales both models."""
    _checks.choice("model", name, ("mlp", "cnn"))
    _checks.positive_int("num_classes", num_classes)
    _checks.positive_int("width", width)
    _checks.positive_int("depth", depth)
    if name == "mlp":
        return MLP(hidden=(int(width),) * int(depth), num_classes=int(num_classes))
    return CNN1D(channels=(max(8, width // 3),) * (int(depth) + 1), num_classes=int(num_classes))


def per_example_loss(model: nn.Module, params, x, y):
    """Cross-entropy l_i(w) = -log softmax(f(x_i; w))_{y_i} in nats, shape [n]."""
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y)


def mean_loss(model: nn.Module, params, x, y):
    """Training loss L(w) = (1/n) sum_i l_i(w), nats."""
    return jnp.mean(per_example_loss(model, params, x, y))


def accuracy(model: nn.Module, params, x, y):
    """Fraction of examples whose arg-max logit is the label, in [0, 1]."""
    return jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == y)


def per_example_grads(model: nn.Module, params, x, y):
    """grad l_i(w) for every example: a pytree shaped like ``params`` with a leading axis [n].

    Memory is n times the parameter count, so the loop computes these only when a noise
    injection asks for them.
    """

    def single(p, xi, yi):
        return per_example_loss(model, p, xi[None], yi[None])[0]

    return jax.vmap(jax.grad(single), in_axes=(None, 0, 0))(params, x, y)
