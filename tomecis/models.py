"""Model names and weights: short names for the DeiT family, local checkpoints, timm pretrained."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, Optional, Union

import timm
import torch
from torch import nn

SHORT_NAMES: Dict[str, str] = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "deit_small_distilled": "deit_small_distilled_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
}

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def resolve_model_name(name: str) -> str:
    """Short name (``deit_small``) or timm name -> timm name; unknown names raise with suggestions."""
    name = name.strip()
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if timm.is_model(name):
        return name
    candidates = list(SHORT_NAMES) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}: not a short name ({', '.join(SHORT_NAMES)}) nor a timm model{hint}")


def short_name(timm_name: str) -> str:
    """The short name of a timm DeiT name, or the timm name itself."""
    for short, full in SHORT_NAMES.items():
        if full == timm_name:
            return short
    return timm_name


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load local weights strictly: ``.safetensors``, or a torch file holding a state dict
    directly or under ``"model"`` / ``"state_dict"`` (DeiT's own release format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: {err}") from err
    return model


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: Optional[Union[str, Path]] = None,
    **kwargs,
) -> nn.Module:
    """Create a timm model in eval mode by short or timm name.

    ``checkpoint`` loads local weights (no network); otherwise ``pretrained=True``
    asks timm for its published weights (needs the Hugging Face Hub), and neither
    gives random weights.
    """
    timm_name = resolve_model_name(name)
    model = timm.create_model(timm_name, pretrained=pretrained and checkpoint is None, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()
