"""ToMeCIS: Token Merging with Class Importance Score for timm Vision Transformers."""
from .merge import bipartite_soft_matching, class_attention, class_importance, merge_weighted
from .models import create_model, resolve_model_name
from .patch import MergeState, patch
from .schedule import parse_r_values, resolve_schedule

__version__ = "0.1.0"

__all__ = [
    "bipartite_soft_matching",
    "class_attention",
    "class_importance",
    "create_model",
    "merge_weighted",
    "MergeState",
    "parse_r_values",
    "patch",
    "resolve_model_name",
    "resolve_schedule",
]
