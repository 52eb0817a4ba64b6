"""The registered adapter methods: name → :class:`~tlora_analysis.adapters.spec.MethodSpec`.

Registering a method is one entry in ``_SPECS`` (its order is the order tables, figures and
``tlora-analysis params`` list methods in). Nothing else in the package names a method to decide
what to store, read, count or analyse.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from . import full, lora, loraxs, tlora, vera
from .spec import MethodSpec

__all__ = ["METHODS", "get_spec", "method_names", "spec_of"]

_SPECS = (tlora.SPEC, lora.SPEC, full.SPEC, vera.SPEC, loraxs.SPEC)

METHODS: Mapping[str, MethodSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(METHODS)


def get_spec(name: object) -> MethodSpec:
    """The spec of a method name; an unknown name is a ValueError listing the known ones."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown adapter method {name!r}; this tlora-analysis knows {list(METHODS)}")
    return spec


def spec_of(config: object) -> MethodSpec:
    """The spec whose config class ``config`` is an instance of (a TypeError names the config classes)."""
    for spec in METHODS.values():
        if isinstance(config, spec.config_class):
            return spec
    names = ", ".join(spec.config_class.__name__ for spec in METHODS.values())
    raise TypeError(f"config must be one of {names}, got {type(config).__name__}")
