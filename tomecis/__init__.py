"""ToMeCIS: Token Merging with Class Importance Score for timm Vision Transformers."""

from .merge import bipartite_soft_matching, class_attention, class_importance, merge_weighted
from .models import check_supported, create_model, max_r, resolve_model_name
from .patch import MergeState, patch
from .schedule import parse_r_values, resolve_schedule

__version__ = "0.1.0"

__all__ = [
    "bipartite_soft_matching",
    "check_supported",
    "class_attention",
    "class_importance",
    "create_model",
    "max_r",
    "merge_weighted",
    "MergeState",
    "parse_r_values",
    "patch",
    "resolve_model_name",
    "resolve_schedule",
]
