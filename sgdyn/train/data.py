"""Classification data sets, built locally: nothing is downloaded at run time.

Three sources, all returned as a :class:`Dataset` of float32 inputs and int32 labels:

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020), *generated* with
  ``mnist1d.data.make_dataset`` (pure NumPy; the package's ``get_dataset`` would try a download,
  so it is never called). Defaults reproduce the canonical set: 5000 signals of length 40,
  10 classes, 4000 train / 1000 test.
- ``teacher_student``: Gaussian inputs x ~ N(0, I_dim) labelled by a random one-hidden-layer
  teacher, y = argmax_c (W2 tanh(W1 x))_c, with a fraction of labels replaced at random.
- ``load_npz``: a user's own arrays in an ``.npz`` with x_train, y_train, x_test, y_test.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path

import numpy as np

from .. import _checks


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/test split. x_*: float32 [n, ...]; y_*: int32 [n] with values in [0, num_classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = "custom"

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


def check_dataset(data: Dataset, prefix: str = "data.") -> None:
    """ValueError naming the array (``prefix`` + its field) unless ``data`` can be trained on:
    x_* of shape [n, features...] with n >= 1 and finite entries, train and test with the same
    features; y_* one integer label in [0, num_classes) per row of its x_*. Datasets from this
    module's constructors pass; one built directly is checked when ``train`` receives it
    (unchecked, a NaN input or a label past the logits reads as a diverged run, and a short
    y_train is indexed past its end without a word)."""
    for split in ("train", "test"):
        x, y = np.asarray(getattr(data, f"x_{split}")), np.asarray(getattr(data, f"y_{split}"))
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{prefix}x_{split} must have shape [n, features...] with n >= 1, "
                             f"got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{prefix}x_{split} must be finite (no NaN or inf)")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.shape[0] != x.shape[0]:
            raise ValueError(f"{prefix}y_{split} must hold one integer label per row of "
                             f"{prefix}x_{split} ({x.shape[0]}), got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= data.num_classes):
            raise ValueError(f"{prefix}y_{split} must hold labels in [0, num_classes="
                             f"{data.num_classes}), got labels from {y.min()} to {y.max()}")
    if np.shape(data.x_train)[1:] != np.shape(data.x_test)[1:]:
        raise ValueError(f"{prefix}x_train and {prefix}x_test must have the same feature shape, "
                         f"got {np.shape(data.x_train)[1:]} and {np.shape(data.x_test)[1:]}")


def _validated(x_train, y_train, x_test, y_test, name, num_classes=None) -> Dataset:
    x = {k: np.asarray(v, dtype=np.float32) for k, v in (("x_train", x_train), ("x_test", x_test))}
    y = {}
    for key, value in (("y_train", y_train), ("y_test", y_test)):
        arr = np.asarray(value)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.min(initial=0) < 0:
            raise ValueError(f"{key} must be a 1-D array of integer labels >= 0, "
                             f"got {arr.dtype} {arr.shape}")
        y[key] = arr.astype(np.int32)
    k = int(max(y["y_train"].max(initial=0), y["y_test"].max(initial=0))) + 1
    data = Dataset(**x, **y, num_classes=k if num_classes is None else max(k, num_classes),
                   name=name)
    check_dataset(data, prefix="")
    for arr in (*x.values(), *y.values()):
        arr.setflags(write=False)  # shared by cache; a caller's in-place edit would leak
    return data


@functools.lru_cache(maxsize=4)
def mnist1d(num_samples: int = 5000, *, seed: int = 42, train_split: float = 0.8) -> Dataset:
    """MNIST-1D generated offline (about 1 s for 5000 signals; cached in memory per arguments).

    ``mnist1d.make_dataset`` reseeds NumPy's and Python's global generators; their states are
    restored afterwards so that calling this has no effect on the caller's random streams.
    """
    _checks.positive_int("num_samples", num_samples)
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20 (two per class), got {num_samples}")
    _checks.in_range("train_split", train_split, 0.0, 1.0)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), float(train_split)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    if len(d["y"]) == 0 or len(d["y_test"]) == 0:
        raise ValueError(f"train_split={train_split} leaves an empty split "
                         f"for {num_samples} samples")
    return _validated(d["x"], d["y"], d["x_test"], d["y_test"], "mnist1d", num_classes=10)


def teacher_student(
    n_train: int = 2000,
    n_test: int = 1000,
    *,
    dim: int = 40,
    num_classes: int = 10,
    teacher_width: int = 64,
    label_noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Inputs x ~ N(0, I_dim); labels from a random tanh teacher; ``label_noise`` in [0, 1) is the
    fraction of labels (train and test) redrawn uniformly, which sets a Bayes error floor."""
    for name, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim),
                    ("teacher_width", teacher_width)):
        _checks.positive_int(name, v)
    _checks.positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    _checks.finite("label_noise", label_noise)
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must lie in [0, 1), got {label_noise}")
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(dim, teacher_width)) / np.sqrt(dim)  # unit-variance pre-activations
    w2 = rng.normal(size=(teacher_width, num_classes)) / np.sqrt(teacher_width)
    x = rng.normal(size=(n_train + n_test, dim))
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    flip = rng.random(len(y)) < label_noise
    y = np.where(flip, rng.integers(0, num_classes, len(y)), y)
    return _validated(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "teacher_student",
                      num_classes=num_classes)


def load_npz(path: str | Path) -> Dataset:
    """A user's arrays: an ``.npz`` holding x_train, y_train, x_test, y_test (labels integer)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing .npz file, got {str(path)!r}")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise ValueError(f"path {str(path)!r} lacks arrays {missing}")
        return _validated(f["x_train"], f["y_train"], f["x_test"], f["y_test"], path.stem)


def load_dataset(name: str, *, path: str | Path | None = None, seed: int | None = None,
                 num_samples: int | None = None) -> Dataset:
    """Dispatch by name: 'mnist1d', 'teacher_student' or 'npz' (needs ``path``)."""
    _checks.choice("dataset", name, ("mnist1d", "teacher_student", "npz"))
    if name == "npz":
        if path is None:
            raise ValueError("path is required for dataset 'npz'")
        for arg, value in (("num_samples", num_samples), ("seed", seed)):
            if value is not None:  # the file holds its own examples and split
                raise ValueError(f"{arg} applies to the generated data sets, not 'npz'")
        return load_npz(path)
    kwargs = {} if seed is None else {"seed": seed}
    if name == "mnist1d":
        return mnist1d(5000 if num_samples is None else num_samples, **kwargs)
    n = 4000 if num_samples is None else _checks.positive_int("num_samples", num_samples)
    if n < 4:
        raise ValueError(f"num_samples must be >= 4, got {n}")
    return teacher_student(n - n // 4, n // 4, **kwargs)  # a 3:1 train/test split
