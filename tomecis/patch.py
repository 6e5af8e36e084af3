"""Patch a timm VisionTransformer in place so that its blocks reduce tokens.

``tomecis.patch(model, r=13)`` swaps the classes of the model, its blocks and
their attention for subclasses defined here (ToMe's habit: the weights and the
module tree stay as they are). Afterwards ``tomecis.set_reduction(model, method,
r=..., keep=...)`` (or ``model.method``, ``model.r``, ``model.keep``) changes the
method and its amount between forward passes.

Per block whose method removes tokens there (``tomecis.methods``): attention
(fused SDPA; with ``log s`` of the token sizes as an additive bias for the methods
with proportional attention), the keys averaged over heads, and what the method
needs beside them (the class importance score, or the class row of attention)
-> the attention residual -> the method's reduction (ToMeCIS: bipartite soft
matching on the keys, score-weighted merge; ToMe: size-weighted; PiToMe, ToFu,
EViT: see their modules) -> MLP. Other blocks run timm's own code, so the
unreduced setting gives the unpatched model's logits at its speed. Sizes (and
traced sources) are reset at every forward.
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
from .methods import REDUCERS, BlockView, Reducer
from .names import UNREDUCED, Method, check_amount, method_spec
from .schedule import RSpec, resolve_schedule

ATTENTIONS = ("fused", "explicit")


# --------------------------------------------------------------------------- state


@dataclass
class MergeState:
    """Per-forward state shared by the blocks of one patched model (reset at every forward).

    ``method``: a name of ``tomecis.names.METHODS``; ``schedule``: per-block r (methods reduced by r);
    ``keep``: the keep ratio (methods reduced by keep), or None.
    ``size``: ``[B, N, 1]`` float32 token sizes, None before the first merge (methods that track sizes).
    ``source``: ``[B, N, N0]`` source map when tracing, else None.
    ``tokens``: token count after each block of the last forward (for benchmarks and tests).
    """

    schedule: List[int]
    method: str = "tomecis"
    keep: Optional[float] = None
    prop_attn: bool = True
    trace_source: bool = False
    attention: str = "fused"
    class_token: bool = True
    distill_token: bool = False
    size: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None
    tokens: List[int] = field(default_factory=list)
    spec: Method = field(init=False, repr=False)  # METHODS[method], looked up once per setting
    reducer: Optional[Reducer] = field(init=False, repr=False)  # its functions; None for the unreduced model

    def __post_init__(self) -> None:
        self.set_method(self.method)

    def set_method(self, name: str) -> None:
        self.spec = method_spec(name)  # an unknown name raises, listing the methods
        self.method = name
        self.reducer = REDUCERS.get(name)

    @property
    def mode(self) -> str:
        """The method's old name (``mode``), kept for code written before methods."""
        return self.method

    @mode.setter
    def mode(self, name: str) -> None:
        self.set_method(name)

    def reset(self) -> None:
        self.size = None
        self.source = None
        self.tokens = []

    def ensure_sizes(self, x: torch.Tensor) -> None:
        """Sizes of ones ``[B, N, 1]`` before the first merge of a forward."""
        if self.size is None:
            self.size = M.initial_state(x, trace_source=False)[0]


# --------------------------------------------------------------------------- modules


class ToMeCISAttention(Attention):
    """timm ``Attention`` that also returns the merge metric and the class importance score."""

    _merge_state: MergeState  # shared with the blocks; ``attention`` picks SDPA or the full matrix

    def forward_merge(
        self, x: torch.Tensor, size: Optional[torch.Tensor], need_score: bool, need_cls_attn: bool = False
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Attention (proportional where sizes are given), plus what the reduction needs.

        Args:
            x: ``[B, N, C]`` normalised tokens.
            size: ``[B, N, 1]`` token sizes, or None (no bias).
            need_score: compute the class importance score (ToMeCIS).
            need_cls_attn: return the class row of attention averaged over heads (EViT).

        Returns:
            ``out [B, N, C]``, ``metric [B, N, D]`` (keys averaged over heads),
            ``score [B, N, 1]`` float32 or None, ``cls_attn [B, N]`` float32 or None.
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

        score = cls_attn = None
        if need_score or need_cls_attn:
            if cls_row is None:  # only row 0 of the attention matrix: [B, H, 1, N]
                cls_row = M.class_row(q.narrow(2, 0, 1), k, self.scale, log_size)
            if need_score:
                score = M.class_importance_of_row(cls_row, v)  # [B, N, 1]
            if need_cls_attn:
                cls_attn = M.as_dtype(cls_row, M.accumulation_dtype(cls_row.dtype)).mean(dim=1).squeeze(1)
        return out, k.mean(dim=1), score, cls_attn

    def _explicit_attention(self, q, k, v, bias):
        """The reference code's formulation: the full ``[B, H, N, N]`` matrix, row 0 read from it."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v, attn.narrow(2, 0, 1)


class ToMeCISBlock(Block):
    """timm ``Block`` that reduces tokens after attention as its method says; a block that removes
    nothing runs timm's code."""

    _merge_state: MergeState
    _block_index: int

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        state = self._merge_state
        count = self._count(state, x.shape[1])
        if count <= 0:
            x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
            state.tokens.append(x.shape[1])
            return x
        if attn_mask is not None or is_causal:
            raise ValueError(
                "token reduction does not support attention masks; call the model without attn_mask"
            )

        method = state.spec
        size = state.size if state.prop_attn and method.prop_attn else None
        out, metric, score, cls_attn = self.attn.forward_merge(
            self.norm1(x), size, method.needs_score, method.needs_cls_attn
        )
        x = x + self.drop_path1(self.ls1(out))

        if state.trace_source and state.source is None:
            state.source = M.initial_state(x, True)[1]
        view = BlockView(x, metric, score, cls_attn, self._block_index, len(state.schedule), count)
        x = state.reducer.reduce(method, view, state)
        x = x + self.drop_path2(self.ls2(self._mlp(self.norm2(x))))
        state.tokens.append(x.shape[1])
        return x

    def _count(self, state: MergeState, tokens: int) -> int:
        """Tokens this block merges or drops for the current method and amount (0: timm's block)."""
        if state.reducer is None:
            return 0
        index = self._block_index
        return state.reducer.count(tokens, index, len(state.schedule), state.schedule[index], state.keep)

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
        self._merge_state.keep = None
        self._r_spec = value

    @property
    def method(self) -> str:
        """A name of ``tomecis.names.METHODS``; may change between forward passes (``set_reduction``
        changes the method and its amount together)."""
        return self._merge_state.method

    @method.setter
    def method(self, value: str) -> None:
        if self._merge_state.distill_token:
            _check_method_supports_distillation(value)
        self._merge_state.set_method(value)

    mode = method  # the old name

    @property
    def keep(self) -> Optional[float]:
        """The keep ratio in (0, 1] of the methods reduced by keep, or None (the schedule's r is used).
        Setting it sets r to 0; setting ``r`` sets it back to None."""
        return self._merge_state.keep

    @keep.setter
    def keep(self, value: Optional[float]) -> None:
        if value is None:
            self._merge_state.keep = None
            return
        value = float(value)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"keep must lie in (0, 1], got {value}")
        self.r = 0
        self._merge_state.keep = value

    @property
    def merge_state(self) -> MergeState:
        return self._merge_state

    def forward_features(self, *args, **kwargs):
        self._merge_state.reset()
        _check_amount_taken(self._merge_state)
        return super().forward_features(*args, **kwargs)

    def forward_intermediates(self, *args, **kwargs):
        """timm's intermediates (also behind ``get_intermediate_layers``), with the merge state reset.

        Merged tokens no longer form the patch grid, so with any ``r_l > 0`` only
        ``output_fmt="NLC"`` works: each intermediate is then ``[B, N_l - prefix, C]``."""
        self._merge_state.reset()
        call = inspect.signature(super().forward_intermediates).bind(*args, **kwargs)
        call.apply_defaults()
        state = self._merge_state
        reduces = state.reducer is not None and (state.keep is not None or any(state.schedule))
        if call.arguments.get("output_fmt") == "NCHW" and reduces and (state.keep or 0.0) < 1.0:
            raise ValueError(
                f"token merging (r = {self._r_spec!r}) leaves fewer tokens than the patch grid, so intermediates "
                "cannot be reshaped to NCHW: pass output_fmt='NLC' (or reshape=False), or set model.r = 0"
            )
        return super().forward_intermediates(*args, **kwargs)


# --------------------------------------------------------------------------- patch


def patch(
    model: nn.Module,
    r: RSpec = 0,
    method: str = "tomecis",
    trace_source: bool = False,
    prop_attn: bool = True,
    attention: str = "fused",
    keep: Optional[float] = None,
    mode: Optional[str] = None,
) -> nn.Module:
    """Turn a timm ``VisionTransformer`` into a token-reducing model, in place; returns the model.

    Args:
        model: a timm ``VisionTransformer`` (DeiT, distilled DeiT, ViT with
            LayerScale / qk_norm) whose blocks are timm ``Block`` with ``Attention``.
        r: tokens removed per block (int), ``(r, inflection)``, or a per-block list.
        method: a name of ``tomecis.names.METHODS``: ``"tomecis"`` (class-importance-weighted
            merge), ``"tome"`` (size-weighted), ``"pitome"``, ``"tofu"``, ``"evit"`` (keep only), or
            ``"none"`` (the unreduced model).
        trace_source: keep ``model.merge_state.source`` ``[B, N, N0]`` for visualisation.
        prop_attn: add ``log s`` to the attention logits once tokens have merged (for the methods
            that apply proportional attention: ToMe, ToMeCIS).
        attention: ``"fused"`` (SDPA + the class row alone) or ``"explicit"`` (the full
            ``N x N`` matrix, as the reference code; for comparisons only).
        keep: the per-block keep ratio, in place of ``r`` (methods that take it).
        mode: the old name of ``method``.

    Patching twice only updates the settings.
    """
    method = mode if mode is not None else method
    method_spec(method)  # an unknown name raises, listing the methods
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if keep is not None and r != 0:
        raise ValueError(f"give r or keep, not both (got r={r!r}, keep={keep!r})")
    distill_token = _check_supported(model)
    if distill_token:
        _check_method_supports_distillation(method)
    state = MergeState(
        schedule=[],
        method=method,
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
    model.keep = keep
    return model


def set_reduction(
    model: nn.Module, method: str, r: Optional[int] = None, keep: Optional[float] = None
) -> nn.Module:
    """Set a patched model's method and its amount together, between forward passes; returns the model.

    ``r`` (tokens per block) or ``keep`` (the per-block keep ratio), whichever ``method`` takes
    (``tomecis.names.check_amount`` says which and raises otherwise); ``("none", r=0)`` is the unreduced
    model. ``set_reduction(model, "evit", keep=0.7)``, ``set_reduction(model, "tome", r=13)``."""
    if not isinstance(model, ToMeCISVisionTransformer):
        raise TypeError(f"{type(model).__name__} is not patched: call tomecis.patch(model) first")
    if method == UNREDUCED and r is None and keep is None:
        r = 0
    check_amount(method, r, keep)
    model.method = method
    if keep is not None:
        model.keep = keep
    else:
        model.r = r
    return model


def _check_amount_taken(state: MergeState) -> None:
    """Refuse a forward whose amount the method does not take (e.g. EViT with ``r``), naming both."""
    kind = "keep" if state.keep is not None else ("r" if any(state.schedule) else None)
    if kind is not None and state.reducer is not None and not state.spec.takes(kind):
        takes = " or ".join(state.spec.amounts) or "no amount"
        raise ValueError(
            f"method {state.method!r} takes {takes}, but the model has {kind} set; "
            f"use tomecis.set_reduction(model, {state.method!r}, ...) with an amount it takes"
        )


def _check_method_supports_distillation(method: str) -> None:
    if method not in (UNREDUCED, "tomecis", "tome"):
        raise ValueError(
            f"method {method!r} supports models with a class token only, not a distillation token; "
            "use a non-distilled model (deit_small rather than deit_small_distilled) or tomecis/tome"
        )


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
