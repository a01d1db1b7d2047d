r"""Resumable work: finished pieces are saved as they finish and found again on a re-run.

A ``Checkpoint`` is a folder. ``fingerprint(...)`` turns whatever determines a piece of work
(arrays, pytrees such as a dynamic, numbers, strings) into a stable hex key; ``load``/``save``
read and atomically write one piece (a dict of arrays, as .npz) under that key. A run killed at
any moment (even kill -9) loses at most the piece in progress: re-running the same command
loads the finished pieces and computes the rest. Since every particle owns its random stream,
the resumed result is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import inspect
import io
from pathlib import Path

import jax
import numpy as np

from .io import atomic_write_bytes


def fingerprint(*parts) -> str:
    """A stable hash of numbers, strings, arrays and pytrees (structure and leaf values)."""
    h = hashlib.sha256()
    for part in parts:
        leaves, treedef = jax.tree.flatten(part)
        h.update(str(treedef).encode())
        for leaf in leaves:
            if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            arr = np.asarray(leaf)
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:24]


_PACKAGE = Path(__file__).resolve().parent


def _package_files() -> list[Path]:
    # is_file: an editor's lock file (a dangling "*.py" link) is no source
    return sorted(p for p in _PACKAGE.rglob("*.py") if p.is_file())


def _defining_files(trees) -> set[Path]:
    """The source files of the classes in ``trees`` defined outside sgdyn (a user's landscape
    or region); builtins and classes without a file (typed at a prompt) have none."""
    types, stack = set(), [jax.tree.structure(t) for t in trees]
    while stack:
        node = stack.pop()
        if node.node_data() is not None:
            types.add(node.node_data()[0])
        stack.extend(node.children())
    files = set()
    for t in types:
        try:
            path = Path(inspect.getsourcefile(t)).resolve()
        except (TypeError, OSError):
            continue
        # is_file: a script read from stdin ("<stdin>"), a module in a zip or a .pyc alone
        # reports a path that cannot be read; its code goes unseen
        if path.is_file() and not path.is_relative_to(_PACKAGE):
            files.add(path)
    return files


def code_tag(*trees) -> tuple:
    """What a saved piece was computed with, beyond its arguments: sgdyn's version and a hash
    of every source file of the package (from git or not, committed or not) and of the files
    defining the classes in ``trees`` that come from elsewhere (a user's landscape, its
    module's constants included; by its full path, so a copy elsewhere computes again). A
    piece from other code is computed again, not mixed in; a change in code those files
    import, or in a class with no readable source file, goes unseen."""
    from . import __version__

    h = hashlib.sha256()
    for path in [*_package_files(), *sorted(_defining_files(trees))]:
        # the package's files by their names in it: the same code installed elsewhere matches
        inside = path.is_relative_to(_PACKAGE)
        h.update((path.relative_to(_PACKAGE) if inside else path).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return (__version__, h.hexdigest()[:24])


class Checkpoint:
    def __init__(self, folder):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint must be a folder, got the file {self.folder}")
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.exists():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def save(self, key: str, arrays: dict) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write_bytes(self._path(key), buf.getvalue())

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.npz")))
