"""Frozen dataclasses registered as JAX pytrees.

Fields are pytree leaves (so a landscape or a dynamic can be vmapped over its parameters) unless
declared with ``static_field()``, which makes them part of the compiled structure (shapes, names,
integer sizes that choose array shapes).
"""

from __future__ import annotations

import dataclasses

import jax


def static_field(**kwargs):
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


replace = dataclasses.replace
