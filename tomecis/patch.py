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
import numbers
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from . import merge as M
from .methods import BlockView
from .names import BUILTIN_ORIGIN, UNREDUCED, Method, MethodError, check_amount, method_spec
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
    ``patches``: the model's patch count ``P`` (``patch_embed.num_patches``), set by ``patch()``; passed to
    a method's ``count`` that takes a ``patches`` argument (counts relative to ``P``, e.g. ATC's) and to its
    ``check`` (amounts that depend on it, e.g. DiffRate's); 0 where unknown.
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
    patches: int = 0
    spec: Method = field(init=False, repr=False)  # the method's declaration, looked up once per setting
    count_fn: Optional[Callable] = field(init=False, repr=False)  # its count; None for the unreduced model
    reduce_fn: Optional[Callable] = field(init=False, repr=False)  # its reduce
    count_takes_patches: bool = field(init=False, repr=False)  # its count has a ``patches`` argument
    checked: bool = field(init=False, repr=False)  # not built in: every count and reduce is checked
    check_fn: Optional[Callable] = field(init=False, repr=False)  # its check of amounts, or None

    def __post_init__(self) -> None:
        self.set_method(self.method)

    def set_method(self, name: str) -> None:
        self.spec = method_spec(name)  # an unknown name raises, listing the methods
        self.method = name
        self.count_fn, self.reduce_fn, self.check_fn = self.spec.functions()
        self.count_takes_patches = self.count_fn is not None and _takes_argument(self.count_fn, "patches")
        self.checked = self.spec.origin != BUILTIN_ORIGIN

    @property
    def reducer(self) -> Optional[Callable]:
        """The method's reduce, or None for the unreduced model (a method that reduces nothing)."""
        return self.reduce_fn

    @property
    def reduces(self) -> bool:
        """Whether the current amount reduces anything: a method with a keep below 1 or some r > 0."""
        if self.reduce_fn is None:
            return False
        return (self.keep is not None and self.keep < 1.0) or any(self.schedule)

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
        self, x: torch.Tensor, size: Optional[torch.Tensor], needs: FrozenSet[str] = frozenset()
    ) -> Tuple[
        torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]
    ]:
        """Attention (proportional where sizes are given), plus what the reduction ``needs``.

        Args:
            x: ``[B, N, C]`` normalised tokens.
            size: ``[B, N, 1]`` token sizes, or None (no bias).
            needs: of ``tomecis.names.NEEDS``: ``"score"`` (class importance score), ``"cls_attn"``
                (the class row of attention averaged over heads), ``"attn"`` (the full map: the
                attention is then computed explicitly).

        Returns:
            ``out [B, N, C]``, ``metric [B, N, D]`` (keys averaged over heads), ``score [B, N, 1]``
            float32 or None, ``cls_attn [B, N]`` float32 or None, ``attn [B, H, N, N]`` or None.
        """
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v, log_size = self._qkv(x, size)
        bias = None if log_size is None else M.as_dtype(log_size, q.dtype)
        attn = None
        if self._merge_state.attention == "explicit" or "attn" in needs:
            out, attn = self._explicit_attention(q, k, v, bias)
            cls_row = attn.narrow(2, 0, 1)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )  # [B, H, N, D]
            cls_row = None
        out = self._project(out, gate)
        score, cls_attn = self._class_products(q, k, v, log_size, cls_row, needs)
        return out, k.mean(dim=1), score, cls_attn, (attn if "attn" in needs else None)

    def probe(
        self, x: torch.Tensor, size: Optional[torch.Tensor], needs: FrozenSet[str]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """What a reduction before the attention needs, without the attention's output: ``x [B, N, C]``
        normalised tokens -> ``metric [B, N, D]``, ``score``, ``cls_attn``, ``attn [B, H, N, N]`` (as
        ``forward_merge``).

        ``q`` and ``k`` come from the first ``2C`` rows of ``qkv`` as their own product ``x @ W_qkᵀ + b_qk``
        (MCTF's code computes them so; no value vectors are computed unless ``"score"`` needs them)."""
        B, N, _ = x.shape
        if "score" in needs:
            q, k, v, _ = self._qkv(x, None)
        else:
            qk = (
                self._qkv_rows(x, 0, 2).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            )
            q, k = qk.unbind(0)  # [B, H, N, D] each
            q, k, v = self.q_norm(q), self.k_norm(k), None
        log_size = None if size is None else size.log().reshape(B, 1, 1, N)  # [B, 1, 1, N] float32: log s
        attn = cls_row = None
        if "attn" in needs:
            attn = self._attention_probs(q, k, None if log_size is None else M.as_dtype(log_size, q.dtype))
            cls_row = attn.narrow(2, 0, 1)
        score, cls_attn = self._class_products(q, k, v, log_size, cls_row, needs)
        return k.mean(dim=1), score, cls_attn, attn

    def apply_probs(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """``proj(attn @ v)`` with given attention probabilities: ``x [B, N, C]`` normalised tokens,
        ``attn [B, H, N, N]`` -> ``[B, N, C]`` (MCTF's one-step-ahead attention). ``v`` comes from the last
        ``C`` rows of ``qkv`` as their own product ``x @ W_vᵀ + b_v`` (as MCTF's code; no q, k computed)."""
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        v = (
            self._qkv_rows(x, 2, 1).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        )  # [B, H, N, D]
        return self._project(self.attn_drop(attn).to(v.dtype) @ v, gate)

    def _qkv_rows(self, x: torch.Tensor, first: int, parts: int) -> torch.Tensor:
        """``x @ Wᵀ + b`` for ``parts`` of ``qkv``'s three ``C``-row blocks from block ``first`` (0: q, 1: k,
        2: v) as a product of their own: ``x [B, N, C]`` -> ``[B, N, parts * C]``."""
        rows = self.attn_dim
        out = x @ self.qkv.weight.narrow(0, first * rows, parts * rows).t()
        if self.qkv.bias is not None:
            out = out + self.qkv.bias.narrow(0, first * rows, parts * rows)
        return out

    def _qkv(self, x: torch.Tensor, size: Optional[torch.Tensor]):
        """``x [B, N, C]`` -> ``q, k, v [B, H, N, D]`` (q/k normalised as timm does) and ``log s``
        ``[B, 1, 1, N]`` float32 or None."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, D] each
        q, k = self.q_norm(q), self.k_norm(k)
        log_size = None if size is None else size.log().reshape(B, 1, 1, N)  # [B, 1, 1, N] float32: log s
        return q, k, v, log_size

    def _project(self, out: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
        """``[B, H, N, D]`` heads -> ``[B, N, C]``: timm's norm, gate and ``proj``."""
        B, _, N, _ = out.shape
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        out = self.proj(out)
        if self.training:  # an eval-mode dropout is the identity, but still an operator call
            out = self.proj_drop(out)
        return out

    def _class_products(self, q, k, v, log_size, cls_row, needs):
        """The class importance score ``[B, N, 1]`` and the head-mean class row ``[B, N]`` (float32), each
        where ``needs`` lists it; ``cls_row [B, H, 1, N]`` when the full map was computed, else None."""
        score = cls_attn = None
        if "score" in needs or "cls_attn" in needs:
            if cls_row is None:  # only row 0 of the attention matrix: [B, H, 1, N]
                cls_row = M.class_row(q.narrow(2, 0, 1), k, self.scale, log_size)
            if "score" in needs:
                score = M.class_importance_of_row(cls_row, v)  # [B, N, 1]
            if "cls_attn" in needs:
                cls_attn = M.as_dtype(cls_row, M.accumulation_dtype(cls_row.dtype)).mean(dim=1).squeeze(1)
        return score, cls_attn

    def _attention_probs(self, q, k, bias):
        """``softmax(q kᵀ · scale + bias)`` ``[B, H, N, N]``, as the reference code writes it."""
        attn = (q @ k.transpose(-2, -1)) * self.scale  # the order of the methods' reference code
        if bias is not None:
            attn = attn + bias
        return attn.softmax(dim=-1)

    def _explicit_attention(self, q, k, v, bias):
        """The reference code's formulation: the full ``[B, H, N, N]`` matrix; returns ``(out, attn)``."""
        attn = self._attention_probs(q, k, bias)
        return self.attn_drop(attn) @ v, attn


class ToMeCISBlock(Block):
    """timm ``Block`` that reduces tokens after attention as its method says; a block that removes
    nothing runs timm's code."""

    _merge_state: MergeState
    _block_index: int

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        state = self._merge_state
        count = self._count(state, x.shape[1])
        acts = count > 0 or (state.spec.reduce_at_zero and state.reduces)
        size = self._attention_sizes(state, acts)
        if not acts and size is None and (state.attention == "fused" or state.reduce_fn is None):
            x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
            state.tokens.append(x.shape[1])
            return x
        if attn_mask is not None or is_causal:
            raise ValueError(
                "token reduction does not support attention masks; call the model without attn_mask"
            )
        if not acts:  # nothing removed here, but the method's proportional attention applies
            x = x + self.drop_path1(self.ls1(self.attn.forward_merge(self.norm1(x), size)[0]))
        elif state.spec.stage == "before_attn":
            x = self._reduce_before_attention(state, x, size, count)
        else:
            x = self._attention_and_reduce(state, x, size, count)
        if not acts or state.spec.stage != "after_mlp":
            x = x + self.drop_path2(self.ls2(self._mlp(self.norm2(x))))
        state.tokens.append(x.shape[1])
        return x

    def _attention_and_reduce(self, state: MergeState, x: torch.Tensor, size, count: int) -> torch.Tensor:
        """Attention with what the method needs, its residual, then the reduction (``after_attn``) or the
        MLP and then the reduction (``after_mlp``, which adds the MLP residual itself)."""
        needs = state.spec.needs
        out, metric, score, cls_attn, attn = self.attn.forward_merge(self.norm1(x), size, needs)
        x = x + self.drop_path1(self.ls1(out))
        if state.spec.stage == "after_mlp":
            x = x + self.drop_path2(self.ls2(self._mlp(self.norm2(x))))
        view = BlockView(x, metric, score, cls_attn, self._block_index, len(state.schedule), count, attn)
        return self._reduce(state, view)

    def _reduce_before_attention(self, state: MergeState, x: torch.Tensor, size, count: int) -> torch.Tensor:
        """The reduction on the block's input (with attention products of ``LN1(x)``), then the attention on
        the reduced tokens: the probabilities the method set (``view.attn_next``), or a fresh attention."""
        metric, score, cls_attn, attn = self.attn.probe(self.norm1(x), size, state.spec.needs)
        view = BlockView(x, metric, score, cls_attn, self._block_index, len(state.schedule), count, attn)
        x = self._reduce(state, view)
        if view.attn_next is not None:
            out = self.attn.apply_probs(self.norm1(x), view.attn_next)
        else:
            out = self.attn.forward_merge(self.norm1(x), self._attention_sizes(state, True))[0]
        return x + self.drop_path1(self.ls1(out))

    def _reduce(self, state: MergeState, view: BlockView) -> torch.Tensor:
        """The method's reduction of ``view.x [B, N, C]``, with source tracing started where asked."""
        if state.trace_source and state.source is None:
            state.source = M.initial_state(view.x, True)[1]
        if not state.checked:  # the built-in methods: no check, no sync
            return state.reduce_fn(state.spec, view, state)
        try:
            x = state.reduce_fn(state.spec, view, state)
        except Exception as err:  # noqa: BLE001 - a foreign method's error, named and failing its points
            raise _method_error(state, view.index, f"reduce raised {type(err).__name__}: {err}") from err
        check_reduction(state, view, x)
        return x

    @staticmethod
    def _attention_sizes(state: MergeState, acts: bool) -> Optional[torch.Tensor]:
        """The sizes whose ``log`` this block's attention adds, or None: where the method applies
        proportional attention (in its reducing blocks, or in every block) and sizes exist."""
        rule = state.spec.prop_attn
        if state.size is None or not state.prop_attn or rule == "no":
            return None
        return state.size if (rule == "always" or acts) else None

    def _count(self, state: MergeState, tokens: int) -> int:
        """Tokens this block removes for the current method and amount (0: timm's block)."""
        if state.count_fn is None:
            return 0
        index = self._block_index
        args = (tokens, index, len(state.schedule), state.schedule[index], state.keep)
        kwargs = dict(patches=state.patches) if state.count_takes_patches else {}
        if not state.checked:
            return state.count_fn(*args, **kwargs)
        try:
            count = state.count_fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a foreign method's error, named and failing its points
            raise _method_error(state, index, f"count raised {type(err).__name__}: {err}") from err
        prefix = 1 + int(state.distill_token)
        if (
            isinstance(count, bool)
            or not isinstance(count, numbers.Integral)
            or not 0 <= count <= tokens - prefix
        ):
            raise _method_error(
                state,
                index,
                f"count returned {count!r} for {tokens} tokens: need an int in [0, {tokens - prefix}]",
            )
        return int(count)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]``: timm's ``Mlp``, without its two eval-mode dropouts (identities that
        still cost an operator call each); other MLP types and training run the module itself."""
        mlp = self.mlp
        if self.training or type(mlp) is not Mlp:
            return mlp(x)
        return mlp.fc2(mlp.norm(mlp.act(mlp.fc1(x))))


def _method_error(state: MergeState, index: int, what: str) -> MethodError:
    spec = state.spec
    return MethodError(f"method {spec.name!r} ({spec.origin}), block {index}: {what}")


def check_reduction(state: MergeState, view: BlockView, x) -> None:
    """Raise ``MethodError`` unless a foreign method's ``reduce`` gave ``view.x [B, N, C] ->
    [B, N - count, C]`` of the same dtype and device, the class (and distillation) token first and
    untouched, and only finite values where its input was finite. Shapes cost nothing; the value checks
    synchronise (they are skipped while a CUDA graph is captured; its warm-up forwards run them)."""
    before = view.x
    B, N, C = before.shape
    if not isinstance(x, torch.Tensor):
        raise _method_error(state, view.index, f"reduce returned a {type(x).__name__}, not a tensor")
    expected = (B, N - view.count, C)
    if tuple(x.shape) != expected:
        what = "the batch size changed" if x.dim() and x.shape[0] != B else "the token count is not N - count"
        raise _method_error(
            state,
            view.index,
            f"reduce returned shape {list(x.shape)}, expected [B, N - count, C] = {list(expected)} ({what})",
        )
    if x.dtype != before.dtype or x.device != before.device:
        raise _method_error(
            state,
            view.index,
            f"reduce returned {x.dtype} on {x.device}, expected {before.dtype} on {before.device}",
        )
    if state.source is not None and state.source.shape[1] != x.shape[1]:
        raise _method_error(
            state,
            view.index,
            f"state.source has {state.source.shape[1]} rows for {x.shape[1]} tokens: when tracing sources "
            "(tomecis.visualize), reduce must update state.source [B, N', N0] as it reduces x",
        )
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool(torch.isfinite(x).all()) and bool(torch.isfinite(before).all()):
        raise _method_error(state, view.index, "reduce returned NaN or inf from finite input")
    prefix = 1 + int(state.distill_token)
    if not torch.equal(x[:, :prefix], before[:, :prefix]):
        token = "class token" if prefix == 1 else "class and distillation tokens"
        raise _method_error(state, view.index, f"the {token} moved or changed: keep it first and untouched")


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
        if call.arguments.get("output_fmt") == "NCHW" and state.reduces:
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
        patches=int(model.patch_embed.num_patches),
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
    _check_amount_taken(model.merge_state)  # the method's own limits, before any image
    return model


def _takes_argument(function: Callable, name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` (a method's ``count`` may take ``patches``)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def _check_amount_taken(state: MergeState) -> None:
    """Refuse a forward whose amount the method does not take (e.g. EViT with ``r``), naming both, or
    whose amount the method's ``check`` refuses on this model's depth and patch count (e.g. DiffRate at
    keep 0.5)."""
    kind = "keep" if state.keep is not None else ("r" if any(state.schedule) else None)
    if kind is not None and state.reduce_fn is not None and not state.spec.takes(kind):
        takes = " or ".join(state.spec.amounts) or "no amount"
        raise ValueError(
            f"method {state.method!r} takes {takes}, but the model has {kind} set; "
            f"use tomecis.set_reduction(model, {state.method!r}, ...) with an amount it takes"
        )
    if kind is not None and state.check_fn is not None:
        r = None if state.keep is not None else max(state.schedule, default=0)
        state.check_fn(r, state.keep, len(state.schedule), state.patches)


def _check_method_supports_distillation(method: str) -> None:
    if not method_spec(method).distill_token:
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
