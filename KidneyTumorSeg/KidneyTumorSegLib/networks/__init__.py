"""Segmentation networks (pure torch) and a registry to build them from JSON-safe configs.

Checkpoints store ``name`` plus ``config_to_dict(config)`` and rebuild with
``build_network(name, config_from_dict(name, d))``; the round trip
dict -> config -> dict is exact.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple, Type, Union

from torch import nn

from .blocks import NetworkOutput
from .ensemble import Ensemble
from .unet import STAGE1_DEFAULT, STAGE1_TINY, ResidualUNet, UNetConfig
from .vnet import PAPER, SMALL, TINY, ImprovedVNet, VNetConfig

Config = Union[VNetConfig, UNetConfig]

# Explicit registry: name -> (config class, network class).
NETWORKS: Dict[str, Tuple[Type[Any], Type[nn.Module]]] = {
    "improved_vnet": (VNetConfig, ImprovedVNet),
    "residual_unet": (UNetConfig, ResidualUNet),
}

# Named presets per network (for command lines and benchmarks).
PRESETS: Dict[str, Dict[str, Config]] = {
    "improved_vnet": {"paper": PAPER, "small": SMALL, "tiny": TINY},
    "residual_unet": {"default": STAGE1_DEFAULT, "tiny": STAGE1_TINY},
}

__all__ = [
    "NETWORKS", "PRESETS", "NetworkOutput", "Ensemble", "ImprovedVNet", "VNetConfig", "ResidualUNet", "UNetConfig",
    "PAPER", "SMALL", "TINY", "STAGE1_DEFAULT", "STAGE1_TINY",
    "build_network", "config_to_dict", "config_from_dict", "count_parameters",
]


def _lookup(name: str) -> Tuple[Type[Any], Type[nn.Module]]:
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; known networks: {sorted(NETWORKS)}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: Config) -> Dict[str, Any]:
    """JSON-safe dict of a network config (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a network config dataclass, got {type(config).__name__}")
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(name: str, d: Mapping[str, Any]) -> Config:
    """Config of network ``name`` from a dict; missing keys take defaults, unknown keys are an error."""
    config_cls, _ = _lookup(name)
    if not isinstance(d, Mapping):
        raise TypeError(f"config for {name!r} must be a dict, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) for {name!r}: {unknown}; known keys: {sorted(known)}")
    return config_cls(**dict(d))


def build_network(name: str, config: Union[Config, Mapping[str, Any], None] = None) -> nn.Module:
    """Build network ``name`` from its config dataclass, a plain dict, or ``None`` (defaults)."""
    config_cls, net_cls = _lookup(name)
    if config is None:
        config = config_cls()
    elif isinstance(config, Mapping):
        config = config_from_dict(name, config)
    elif not isinstance(config, config_cls):
        raise TypeError(f"network {name!r} needs a {config_cls.__name__} or a dict, "
                        f"got {type(config).__name__}")
    return net_cls(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all by default, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
