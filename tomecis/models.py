"""Model names and weights: short names for the DeiT family, local checkpoints, timm pretrained."""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Dict, Optional, Union

import timm
import torch
from torch import nn

from .names import SHORT_NAMES, short_name  # noqa: F401 - short_name: the models' other name
from .patch import patch

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
    raise ValueError(
        f"unknown model {name!r}: not a short name ({', '.join(SHORT_NAMES)}) nor a timm model{hint}"
    )


def state_dict_from_bytes(data: bytes, name: str) -> Dict[str, torch.Tensor]:
    """A state dict from a checkpoint file's bytes; ``name`` (the file name) picks the format:
    ``.safetensors``, or a torch file holding the dict directly or under ``"model"`` /
    ``"state_dict"`` / ``"model_ema"`` (DeiT's own release format)."""
    if str(name).endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def load_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], name: str) -> nn.Module:
    """Load strictly; a mismatch names the checkpoint and the model."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {name} does not fit {type(model).__name__}: {err}") from err
    return model


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a local ``.pth`` / ``.safetensors`` file strictly into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .pth or .safetensors file")
    return load_state_dict(model, state_dict_from_bytes(path.read_bytes(), path.name), str(path))


def find_checkpoint(directory: Union[str, Path], timm_name: str) -> Path:
    """``DIR/<timm name>.pth|.pt|.bin|.safetensors``; a missing one is an error listing what was tried."""
    directory = Path(directory)
    for suffix in CHECKPOINT_SUFFIXES:
        candidate = directory / f"{timm_name}{suffix}"
        if candidate.is_file():
            return candidate
    tried = ", ".join(f"{timm_name}{s}" for s in CHECKPOINT_SUFFIXES)
    raise FileNotFoundError(f"no checkpoint for model {timm_name} in {directory} (looked for {tried})")


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


def check_supported(model: Union[str, nn.Module]) -> nn.Module:
    """Can ``model`` be swept: does it take ``tomecis.patch``? Returns the patched model.

    Given a name (short or timm), builds the model on the meta device (no memory, no weights);
    given a model, patches that model in place. Raises ``ValueError`` naming the model and what
    it lacks (a timm VisionTransformer with a class token, timm's own blocks and attention); an
    unknown name raises ``resolve_model_name``'s error."""
    name = model if isinstance(model, str) else type(model).__name__
    timm_name = resolve_model_name(model) if isinstance(model, str) else None
    try:
        if timm_name is not None:
            model = timm.create_model(timm_name, device="meta")
        return patch(model)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be swept: {err}") from err


def max_r(name: Union[str, nn.Module]) -> int:
    """The most tokens one block can merge away in model ``name``: ``(N - prefix) // 2`` at the first block.
    Given a name, builds the model on the meta device (no memory, no weights); given a model, reads it."""
    model = timm.create_model(resolve_model_name(name), device="meta") if isinstance(name, str) else name
    num_patches = model.patch_embed.num_patches
    return num_patches // 2
