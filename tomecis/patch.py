"""Patch a timm VisionTransformer in place so that its blocks merge tokens.

``tomecis.patch(model, r=13)`` swaps the classes of the model, its blocks and
their attention for subclasses defined here (ToMe's habit: the weights and the
module tree stay as they are). Afterwards ``model.r`` may be set to an int, an
``(r, inflection)`` pair or a per-block list at any time between forward passes.

Per block with ``r_l > 0``:
attention with proportional attention (fused SDPA, ``log s`` of the token sizes
as an additive bias) -> class importance from the class row only -> bipartite
soft matching on the keys averaged over heads -> score-weighted merge
(``mode="tomecis"``) or size-weighted merge (``mode="tome"``), sizes adding up
-> MLP. Blocks with ``r_l = 0`` run timm's own code, so ``r = 0`` everywhere
gives the unpatched model's logits at its speed. Sizes (and traced sources)
are reset at every forward.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from . import merge as M
from .names import MergeMode, merge_mode
from .schedule import RSpec, resolve_schedule

ATTENTIONS = ("fused", "explicit")


# --------------------------------------------------------------------------- state


@dataclass
class MergeState:
    """Per-forward state shared by the blocks of one patched model (reset at every forward).

    ``size``: ``[B, N, 1]`` float32 token sizes, None before the first merge.
    ``source``: ``[B, N, N0]`` source map when tracing, else None.
    ``tokens``: token count after each block of the last forward (for benchmarks and tests).
    """

    schedule: List[int]
    mode: str = "tomecis"
    prop_attn: bool = True
    trace_source: bool = False
    attention: str = "fused"
    class_token: bool = True
    distill_token: bool = False
    size: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None
    tokens: List[int] = field(default_factory=list)

    def reset(self) -> None:
        self.size = None
        self.source = None
        self.tokens = []


# --------------------------------------------------------------------------- modules


class ToMeCISAttention(Attention):
    """timm ``Attention`` that also returns the merge metric and the class importance score."""

    _merge_state: MergeState  # shared with the blocks; ``attention`` picks SDPA or the full matrix

    def forward_merge(
        self, x: torch.Tensor, size: Optional[torch.Tensor], need_score: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Attention with proportional attention, plus what the merge needs.

        Args:
            x: ``[B, N, C]`` normalised tokens.
            size: ``[B, N, 1]`` token sizes, or None (no bias).
            need_score: compute the class importance score (ToMeCIS mode).

        Returns:
            ``out [B, N, C]``, ``metric [B, N, D]`` (keys averaged over heads),
            ``score [B, N, 1]`` float32 or None.
        """
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, D] each
        q, k = self.q_norm(q), self.k_norm(k)

        log_size = None if size is None else size.log().reshape(B, 1, 1, N)  # [B, 1, 1, N] float32: log s
        bias = None if log_size is None else M.as_dtype(log_size, q.dtype)
        if self._merge_state.attention == "explicit":
            out, cls_row = self._explicit_attention(q, k, v, bias)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )  # [B, H, N, D]
            cls_row = None
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        out = self.proj(out)
        if self.training:  # an eval-mode dropout is the identity, but still an operator call
            out = self.proj_drop(out)

        score = None
        if need_score:
            if cls_row is None:  # only row 0 of the attention matrix: [B, H, 1, N]
                cls_row = M.class_row(q.narrow(2, 0, 1), k, self.scale, log_size)
            score = M.class_importance_of_row(cls_row, v)  # [B, N, 1]
        return out, k.mean(dim=1), score

    def _explicit_attention(self, q, k, v, bias):
        """The reference code's formulation: the full ``[B, H, N, N]`` matrix, row 0 read from it."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v, attn.narrow(2, 0, 1)


class ToMeCISBlock(Block):
    """timm ``Block`` that merges ``r_l`` tokens after attention; ``r_l = 0`` runs timm's code."""

    _merge_state: MergeState
    _block_index: int

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        state = self._merge_state
        r = state.schedule[self._block_index]
        if r <= 0:
            x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
            state.tokens.append(x.shape[1])
            return x
        if attn_mask is not None or is_causal:
            raise ValueError(
                "token merging does not support attention masks; call the model without attn_mask"
            )

        size = state.size if state.prop_attn else None
        mode = merge_mode(state.mode)
        out, metric, score = self.attn.forward_merge(self.norm1(x), size, mode.needs_score)
        x = x + self.drop_path1(self.ls1(out))

        matching = M.bipartite_soft_matching(metric, r, state.class_token, state.distill_token)
        x = self._merge(matching, x, score, mode)
        x = x + self.drop_path2(self.ls2(self._mlp(self.norm2(x))))
        state.tokens.append(x.shape[1])
        return x

    def _merge(
        self, matching: M.Matching, x: torch.Tensor, score: Optional[torch.Tensor], mode: MergeMode
    ) -> torch.Tensor:
        """Merge tokens ``[B, N, C] -> [B, N - r, C]`` weighted as ``mode`` says; update sizes and sources."""
        state = self._merge_state
        if state.size is None:
            state.size, state.source = M.initial_state(x, state.trace_source)
        weight = mode.weight(score, state.size)  # [B, N, 1], or None: weighted by size
        x, state.size = M.merge_tokens(matching, x, weight, state.size)
        if state.source is not None:
            state.source = M.merge_source(matching, state.source)
        return x

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]``: timm's ``Mlp``, without its two eval-mode dropouts (identities that
        still cost an operator call each); other MLP types and training run the module itself."""
        mlp = self.mlp
        if self.training or type(mlp) is not Mlp:
            return mlp(x)
        return mlp.fc2(mlp.norm(mlp.act(mlp.fc1(x))))


class ToMeCISVisionTransformer:
    """Mixin placed in front of the model's own class: ``r`` property and per-forward reset."""

    _merge_state: MergeState

    @property
    def r(self) -> RSpec:
        return self._r_spec

    @r.setter
    def r(self, value: RSpec) -> None:
        self._merge_state.schedule = resolve_schedule(value, len(self.blocks))
        self._r_spec = value

    @property
    def mode(self) -> str:
        """A name of ``tomecis.names.MERGE_MODES``: how merged tokens are averaged; may change between
        forward passes."""
        return self._merge_state.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._merge_state.mode = merge_mode(value).name

    @property
    def merge_state(self) -> MergeState:
        return self._merge_state

    def forward_features(self, *args, **kwargs):
        self._merge_state.reset()
        return super().forward_features(*args, **kwargs)

    def forward_intermediates(self, *args, **kwargs):
        """timm's intermediates (also behind ``get_intermediate_layers``), with the merge state reset.

        Merged tokens no longer form the patch grid, so with any ``r_l > 0`` only
        ``output_fmt="NLC"`` works: each intermediate is then ``[B, N_l - prefix, C]``."""
        self._merge_state.reset()
        call = inspect.signature(super().forward_intermediates).bind(*args, **kwargs)
        call.apply_defaults()
        if call.arguments.get("output_fmt") == "NCHW" and any(r > 0 for r in self._merge_state.schedule):
            raise ValueError(
                f"token merging (r = {self._r_spec!r}) leaves fewer tokens than the patch grid, so intermediates "
                "cannot be reshaped to NCHW: pass output_fmt='NLC' (or reshape=False), or set model.r = 0"
            )
        return super().forward_intermediates(*args, **kwargs)


# --------------------------------------------------------------------------- patch


def patch(
    model: nn.Module,
    r: RSpec = 0,
    mode: str = "tomecis",
    trace_source: bool = False,
    prop_attn: bool = True,
    attention: str = "fused",
) -> nn.Module:
    """Turn a timm ``VisionTransformer`` into a merging model, in place; returns the model.

    Args:
        model: a timm ``VisionTransformer`` (DeiT, distilled DeiT, ViT with
            LayerScale / qk_norm) whose blocks are timm ``Block`` with ``Attention``.
        r: tokens removed per block (int), ``(r, inflection)``, or a per-block list.
        mode: a merge mode of ``tomecis.names.MERGE_MODES``: ``"tomecis"`` (class-importance-weighted
            merge) or ``"tome"`` (size-weighted).
        trace_source: keep ``model.merge_state.source`` ``[B, N, N0]`` for visualisation.
        prop_attn: add ``log s`` to the attention logits once tokens have merged.
        attention: ``"fused"`` (SDPA + the class row alone) or ``"explicit"`` (the full
            ``N x N`` matrix, as the reference code; for comparisons only).

    Patching twice only updates the settings.
    """
    merge_mode(mode)  # an unknown name raises, listing the modes
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    distill_token = _check_supported(model)
    state = MergeState(
        schedule=[],
        mode=mode,
        prop_attn=prop_attn,
        trace_source=trace_source,
        attention=attention,
        class_token=True,
        distill_token=distill_token,
    )
    if not isinstance(model, ToMeCISVisionTransformer):
        model.__class__ = type(
            f"ToMeCIS{model.__class__.__name__}", (ToMeCISVisionTransformer, model.__class__), {}
        )
    model._merge_state = state
    for index, block in enumerate(model.blocks):
        block.__class__ = ToMeCISBlock
        block.attn.__class__ = ToMeCISAttention
        block.attn._merge_state = state
        block._merge_state = state
        block._block_index = index
    model.r = r
    return model


def _check_supported(model: nn.Module) -> bool:
    """Raise a clear error for models the patch cannot handle; returns whether a dist token exists."""
    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"tomecis.patch needs a timm VisionTransformer (DeiT, ViT), got {name}; "
            "create one with timm.create_model('deit_small_patch16_224')"
        )
    if getattr(model, "cls_token", None) is None:
        raise ValueError(
            f"{name} has no class token (class_token=False); ToMeCIS scores tokens by the class token's attention"
        )
    if getattr(model, "num_reg_tokens", 0):
        raise ValueError(
            f"{name} has {model.num_reg_tokens} register tokens, which ToMeCIS does not protect from merging"
        )
    if model.global_pool not in ("token", "") and not hasattr(model, "dist_token"):
        raise ValueError(
            f"{name} pools with global_pool={model.global_pool!r}; ToMeCIS supports class-token pooling only"
        )
    distill_token = getattr(model, "dist_token", None) is not None
    if model.num_prefix_tokens != 1 + int(distill_token):
        raise ValueError(
            f"{name} has {model.num_prefix_tokens} prefix tokens; expected a class (and distillation) token only"
        )
    for i, block in enumerate(model.blocks):
        if type(block) not in (Block, ToMeCISBlock):
            raise TypeError(
                f"{name}.blocks[{i}] is {type(block).__name__}; ToMeCIS patches timm's Block only"
            )
        if type(block.attn) not in (Attention, ToMeCISAttention):
            raise TypeError(
                f"{name}.blocks[{i}].attn is {type(block.attn).__name__}; ToMeCIS patches timm's Attention only"
            )
    return distill_token
