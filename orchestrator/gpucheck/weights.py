"""Which weights each model runs with, decided once and said on the report's first lines.

``--checkpoint-dir DIR``: every model's ``<timm name>.pth|.pt|.bin|.safetensors`` there (a missing one is an
error naming the file looked for). ``--random-weights``: random weights for all, an explicit choice (speed
and agreement only: no accuracy verdict). Neither: each model's checkpoint from the first of
``WEIGHT_PLACES`` that holds it (``.weights/`` in the checkout, ``../shared/assets/weights``,
``shared/assets/weights``); a model with none there runs on random weights, and its line says where gpucheck
looked and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from .config import WEIGHT_PLACES, GpuCheckConfig


@dataclass(frozen=True)
class ModelWeights:
    """One model's weights: a checkpoint file and its sha256, or random (``why`` says why)."""

    model: str
    path: Optional[Path] = None  # None: random weights
    digest: str = ""
    why: str = ""

    @property
    def real(self) -> bool:
        return self.path is not None

    def line(self) -> str:
        """One line for the report's head."""
        if self.path is None:
            return f"- {self.model}: random weights ({self.why})"
        return f"- {self.model}: {self.path} (sha256 {self.digest[:12]}, {self.why})"

    def work_weights(self):
        """What the evaluator takes (``orchestrator.work.Weights``): the checkpoint's bytes, or random."""
        from ..work import Weights

        if self.path is None:
            return Weights("random")
        return Weights("checkpoint", self.path.name, [self.path.read_bytes()], self.digest)


def choose_weights(cfg: GpuCheckConfig, places: Sequence[Path] = WEIGHT_PLACES) -> Dict[str, ModelWeights]:
    """``{timm name: ModelWeights}`` for every model of the check, by the rules above."""
    from shards.manifest import sha256_of_file
    from tomecis.models import find_checkpoint

    if cfg.random_weights and cfg.checkpoint_dir:
        raise ValueError("--random-weights and --checkpoint-dir exclude each other: drop one")
    chosen = {}
    for model in cfg.models:
        if cfg.random_weights:
            chosen[model] = ModelWeights(model, why="--random-weights")
            continue
        if cfg.checkpoint_dir:
            if not Path(cfg.checkpoint_dir).is_dir():
                raise FileNotFoundError(f"--checkpoint-dir {cfg.checkpoint_dir}: no such folder")
            path = find_checkpoint(cfg.checkpoint_dir, model)  # a missing file: an error naming it
            chosen[model] = ModelWeights(model, path, sha256_of_file(path), "--checkpoint-dir")
            continue
        path = _first_checkpoint(model, places)
        if path is None:
            looked = ", ".join(str(p) for p in places)
            chosen[model] = ModelWeights(
                model,
                why=f"no {model}.pth in {looked}: copy it into .weights/ or pass --checkpoint-dir DIR "
                "for accuracy; --random-weights says random on purpose",
            )
        else:
            chosen[model] = ModelWeights(model, path, sha256_of_file(path), "found by default")
    return chosen


def _first_checkpoint(model: str, places: Sequence[Path]) -> Optional[Path]:
    from tomecis.models import find_checkpoint

    for place in places:
        if Path(place).is_dir():
            try:
                return find_checkpoint(place, model)
            except FileNotFoundError:
                continue
    return None


def weights_head(weights: Dict[str, ModelWeights]) -> list:
    """The report's first lines: which weights each model ran with."""
    return ["Weights:", *(w.line() for w in weights.values()), ""]
