"""The model's eval transform, from timm: `timm.data.resolve_data_config` + `create_transform`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def data_config(model_or_cfg: torch.nn.Module | Mapping[str, Any] | str) -> dict[str, Any]:
    """The model's eval data config via timm.data.resolve_data_config.

    Accepts a timm model, a pretrained-cfg dict, or a timm model name. Returns input_size (C, H, W),
    interpolation, crop_pct, crop_mode, mean, std (DeiT: (3, 224, 224), bicubic, 0.9, center, ImageNet mean/std).
    """
    from timm.data import resolve_data_config

    if isinstance(model_or_cfg, torch.nn.Module):
        resolved = resolve_data_config({}, model=model_or_cfg)
    else:
        resolved = resolve_data_config({}, pretrained_cfg=_pretrained_cfg(model_or_cfg))
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    return {key: resolved[key] for key in keys if key in resolved}


def _pretrained_cfg(model_or_cfg: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(model_or_cfg, Mapping):
        return dict(model_or_cfg)
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(model_or_cfg)
    if pretrained is None:
        raise ValueError(f"timm knows no pretrained config for {model_or_cfg!r}; pass the model itself")
    return pretrained.to_dict()


def eval_transform(model_or_cfg: torch.nn.Module | Mapping[str, Any] | str) -> Callable[[Any], torch.Tensor]:
    """timm's eval transform for the model: PIL RGB image -> [3, H, W] float32 (DeiT: resize 248 bicubic,
    centre crop 224, ImageNet mean/std)."""
    from timm.data import create_transform

    return create_transform(**data_config(model_or_cfg), is_training=False)
