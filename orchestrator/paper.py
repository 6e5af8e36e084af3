"""The published ToMeCIS numbers and the DeiT-S comparison of methods at a similar throughput, carried
as data (the product never reads ``../shared``).

Source: K. Seol, S. Roh, K. Chung, "Token Merging with Class Importance Score", IECON 2023.
Every figure was measured on another machine (one NVIDIA RTX 3090, batch 128, on the full
ImageNet-1k validation set with timm's pretrained weights): compare trends (Δ top-1,
speed-up over r = 0), not absolute img/s, with results from this project.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import pandas as pd

CITATION = 'Seol, Roh, Chung, "Token Merging with Class Importance Score", IECON 2023'
METHOD = "tomecis"  # the method whose figures the paper publishes
SETTING = "ImageNet-1k val (50,000 images), one NVIDIA RTX 3090, batch 128, timm pretrained weights"

# timm name -> (label, {r: (top-1 %, img/s)})
PUBLISHED: Dict[str, Tuple[str, Dict[int, Tuple[float, float]]]] = {
    "deit_tiny_patch16_224": (
        "DeiT-Ti",
        {
            0: (72.132, 3342.88),
            8: (71.614, 3795.99),
            9: (71.356, 3944.83),
            10: (71.28, 4107.27),
            11: (71.012, 4272.49),
            12: (70.934, 4461.66),
            13: (70.594, 4672.44),
            14: (70.148, 4891.94),
            15: (69.642, 5134.47),
            16: (69.012, 5367.96),
        },
    ),
    "deit_small_patch16_224": (
        "DeiT-S",
        {
            0: (79.82, 1283.4),
            8: (79.43, 1553.46),
            9: (79.374, 1609.55),
            10: (79.228, 1684.36),
            11: (79.232, 1759.0),
            12: (79.022, 1841.78),
            13: (78.902, 1949.6),
            14: (78.696, 2027.89),
            15: (78.522, 2137.17),
            16: (78.174, 2245.69),
        },
    ),
}

# The code README's comparison on DeiT-S at a similar throughput, no training (one RTX 3090, batch 128):
# (method name in ``tomecis.names.METHODS``, label as published, top-1 %, img/s).
COMPARISON_MODEL = "deit_small_patch16_224"
PUBLISHED_COMPARISON_DEIT_S: List[Tuple[str, str, float, float]] = [
    ("none", "DeiT-S", 79.82, 1282.5),
    ("evit", "EViT", 78.52, 1872.3),
    ("tome", "ToMe", 78.79, 1956.1),
    ("tomecis", "ToMeCIS (r = 13)", 78.90, 1949.6),
]


def published_points() -> pd.DataFrame:
    """The published grid as rows: model (timm name), label, r, top1 (%), img_per_sec; sorted by model, r."""
    rows = [
        dict(model=model, label=label, r=r, top1=top1, img_per_sec=speed)
        for model, (label, by_r) in PUBLISHED.items()
        for r, (top1, speed) in sorted(by_r.items())
    ]
    return pd.DataFrame(rows, columns=["model", "label", "r", "top1", "img_per_sec"])


__all__ = [
    "CITATION",
    "COMPARISON_MODEL",
    "METHOD",
    "PUBLISHED",
    "PUBLISHED_COMPARISON_DEIT_S",
    "SETTING",
    "published_points",
]
