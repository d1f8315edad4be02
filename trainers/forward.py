"""The training forward pass, written once for L layers (an SAE or transcoder is a 1-layer CLT).

Layer i encodes its input ``x[:, i]`` into features ``f_i`` and decodes them
into every output layer j >= i through ``w_dec_i`` viewed as ``[d_sae, (L-i)*d_out]``;
``y_j = sum_i f_i @ w_dec_i[:, j-i] + b_dec_j (+ x_j @ skip_j)``. Matryoshka
dictionaries also return the output of every nested prefix of latents.

Two interchangeable paths compute the same numbers: *dense* (autograd through
``[batch, d_sae]`` matmuls) and *sparse* (one dense encoder GEMM without
autograd, then gathers over the active entries: see :mod:`trainers.kernels`).

Example:
    >>> import torch
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="topk", k=2, d_in=4, d_sae=8))
    >>> _ = [torch.nn.init.normal_(p) for p in sae.parameters()]
    >>> x = torch.randn(3, 1, 4)
    >>> spec = SparsitySpec("topk", k=2)
    >>> dense = forward(layer_params(sae), x, spec, sparse=False)
    >>> sparse = forward(layer_params(sae), x, spec, sparse=True)
    >>> torch.allclose(dense.outputs[-1], sparse.outputs[-1], atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.kinds import BATCHTOPK, JUMPRELU, TOPK, kind
from trainers.kernels import (
    JumpReLUDense,
    JumpReLUSTE,
    Selection,
    autocast_dtype,
    dense_pre,
    gather_pre,
    rounding_margin,
    select_above,
    select_batch_topk,
    select_topk,
    sparse_decode,
)


@dataclass
class LayerParams:
    """The parameters of one encoder layer and of the output layer with the same index."""

    w_enc: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor | None
    w_dec: torch.Tensor
    b_dec: torch.Tensor
    skip: torch.Tensor | None

    @property
    def d_sae(self) -> int:
        return self.w_enc.shape[1]

    def w_dec_flat(self) -> torch.Tensor:
        """Decoder as ``[d_sae, n_out_layers * d_out]``."""
        return self.w_dec.reshape(self.w_dec.shape[0], -1)


def layer_params(dictionary: Dictionary) -> list[LayerParams]:
    """Per-layer views of a dictionary's parameters (SAE/transcoders: one layer)."""
    uses_threshold = dictionary.activation.uses_threshold
    if kind(dictionary.config.type).per_layer_decoders:
        layers = [dictionary.per_layer[i] for i in range(dictionary.config.n_layers)]
    elif kind(dictionary.config.type).layout == "single":
        layers = [dictionary]
    else:
        raise NotImplementedError(f"training {dictionary.config.type} dictionaries is not supported")
    return [
        LayerParams(
            m.w_enc,
            m.b_enc,
            m.threshold if uses_threshold else None,
            m.w_dec,
            m.b_dec,
            getattr(m, "affine_skip_connection", None) if dictionary.config.affine_skip else None,
        )
        for m in layers
    ]


@dataclass(frozen=True)
class SparsitySpec:
    """How features are made sparse during training."""

    architecture: str
    k: int | None = None
    bandwidth: float = 0.001
    batch_keep: int | None = None
    """BatchTopK: entries kept over the global batch (default k * local batch)."""
    global_pool: Callable[[torch.Tensor], torch.Tensor] | None = None
    """BatchTopK under data parallelism: gathers every rank's candidate values."""
    any_rank: Callable[[bool], bool] | None = None
    """BatchTopK under data parallelism: OR of a flag over ranks."""


@dataclass
class LayerCode:
    """One layer's features for a batch."""

    f: torch.Tensor
    """Feature values: ``[nnz]`` at ``sel``'s entries (sparse) or ``[batch, d_sae]`` (dense); differentiable."""
    sel: Selection | None
    pre: torch.Tensor
    """Dense pre-activations without autograd history (aux-k, resampling)."""
    l0_tokens: torch.Tensor
    """Active latents per token; differentiable w.r.t. the threshold for JumpReLU (STE)."""
    fired: torch.Tensor
    """bool ``[d_sae]``: latents active on some token of the batch."""
    batch_threshold: float | None = None
    """BatchTopK: smallest kept activation of this batch."""

    @property
    def density(self) -> float:
        return float(self.l0_tokens.detach().mean()) / self.pre.shape[1]


@dataclass
class ForwardOut:
    codes: list[LayerCode]
    outputs: list[torch.Tensor]
    """``[batch, L, d_out]`` per Matryoshka prefix (one entry without Matryoshka); the last is the full output."""
    buffers: dict = field(default_factory=dict)


class Workspace:
    """Reusable ``[batch, d_sae]`` buffers: fresh multi-100-MB allocations cost page faults on every step."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        key = (name, shape, dtype or like.dtype, like.device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
        return self._buffers[key]


def _fired(sel: Selection | None, f: torch.Tensor, d_sae: int) -> torch.Tensor:
    if sel is None:
        return (f > 0).any(0)
    return torch.zeros(d_sae, dtype=torch.bool, device=f.device).index_fill_(0, sel.cols[f.detach() > 0], True)


def encode_layer(
    lp: LayerParams,
    x: torch.Tensor,
    spec: SparsitySpec,
    *,
    sparse: bool,
    ws: Workspace | None = None,
    name: str = "pre",
) -> LayerCode:
    """Features of one layer's input ``x`` [batch, d_in] under ``spec``."""
    _arch, batch = spec.architecture, x.shape[0]
    if sparse:
        dtype = autocast_dtype(x.device) or x.dtype
        out = ws.get(name, (batch, lp.d_sae), x, dtype) if ws is not None else None
        return _encode_sparse(lp, x, dense_pre(x, lp.w_enc, lp.b_enc, out), spec, ws, name)
    return _encode_dense(lp, torch.addmm(lp.b_enc, x, lp.w_enc), spec)


def _encode_sparse(
    lp: LayerParams, x: torch.Tensor, pre: torch.Tensor, spec: SparsitySpec, ws: Workspace | None, name: str
) -> LayerCode:
    arch, tau = spec.architecture, None
    mask_buffer = ws.get(name + ".mask", pre.shape, pre, torch.bool) if ws is not None else None
    with torch.no_grad():
        if arch == TOPK:
            sel = select_topk(pre, spec.k)
        elif arch == BATCHTOPK:
            sel, tau = select_batch_topk(pre, spec.batch_keep or spec.k * pre.shape[0], spec.global_pool, spec.any_rank)
        elif arch == JUMPRELU:  # the band just below the threshold still gets STE gradients
            sel = select_above(pre, lp.threshold.detach() - spec.bandwidth / 2 - _margin(lp, x, pre), mask_buffer)
        else:
            sel = select_above(pre, -_margin(lp, x, pre), mask_buffer)
    values = gather_pre(sel, x, lp.w_enc, lp.b_enc)
    if arch == JUMPRELU:
        f, step = JumpReLUSTE.apply(values, lp.threshold.index_select(0, sel.cols), spec.bandwidth)
        l0_tokens = sel.row_sum(step)
    else:
        f = torch.relu(values)
        l0_tokens = sel.row_sum((f.detach() > 0).to(f.dtype))
    if tau is not None and sel.nnz:
        tau = float(sel.values.min())
    return LayerCode(f, sel, pre, l0_tokens, _fired(sel, f, lp.d_sae), tau)


def _margin(lp: LayerParams, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor | float:
    """How far below a threshold a low-precision ``pre`` may hold an entry fp32 would select."""
    if pre.dtype == x.dtype:
        return 0.0
    output_rounding = torch.finfo(pre.dtype).eps * (lp.threshold.detach().abs() if lp.threshold is not None else 0.0)
    return rounding_margin(x, lp.w_enc, pre.dtype) + output_rounding


def _encode_dense(lp: LayerParams, pre: torch.Tensor, spec: SparsitySpec) -> LayerCode:
    arch, tau = spec.architecture, None
    if arch == JUMPRELU:
        f, l0_tokens = JumpReLUDense.apply(pre, lp.threshold, spec.bandwidth)
    else:
        if arch == TOPK:
            values, idx = pre.topk(spec.k, dim=-1, sorted=False)
            f = torch.zeros_like(pre).scatter(1, idx, torch.relu(values))
        elif arch == BATCHTOPK:
            sel, tau = select_batch_topk(
                pre.detach(), spec.batch_keep or spec.k * pre.shape[0], spec.global_pool, spec.any_rank
            )
            keep = torch.zeros_like(pre).index_put_((sel.rows, sel.cols), torch.ones_like(sel.values))
            f = torch.relu(pre) * keep
            tau = float(sel.values.min()) if sel.nnz else tau
        else:
            f = torch.relu(pre)
        l0_tokens = (f.detach() > 0).sum(-1, dtype=torch.promote_types(f.dtype, torch.float32))
    return LayerCode(f, None, pre.detach(), l0_tokens, _fired(None, f.detach(), lp.d_sae), tau)


def decode_layer(code: LayerCode, lp: LayerParams, groups: list[int] | None) -> list[torch.Tensor]:
    """Layer i's contribution to outputs i..L-1, ``[batch, (L-i)*d_out]``, per Matryoshka group."""
    w = lp.w_dec_flat()
    bounds = _group_bounds(groups, lp.d_sae)
    if code.sel is None:
        return [code.f[:, lo:hi] @ w[lo:hi] for lo, hi in bounds]
    if len(bounds) == 1:
        return [sparse_decode(code.f, code.sel, w)]
    group_of = torch.bucketize(code.sel.cols, torch.tensor([hi for _, hi in bounds[:-1]], device=w.device), right=True)
    return [sparse_decode(code.f * (group_of == g), code.sel, w) for g in range(len(bounds))]


def _group_bounds(groups: list[int] | None, d_sae: int) -> list[tuple[int, int]]:
    if not groups:
        return [(0, d_sae)]
    ends = torch.tensor(groups).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends))


def forward(
    params: list[LayerParams],
    x: torch.Tensor,
    spec: SparsitySpec,
    *,
    sparse: bool | list[bool],
    groups: list[int] | None = None,
    ws: Workspace | None = None,
) -> ForwardOut:
    """Encode every layer of ``x`` [batch, L, d_in] and decode into ``[batch, L, d_out]`` outputs."""
    n_layers = len(params)
    modes = sparse if isinstance(sparse, list) else [sparse] * n_layers
    codes = [encode_layer(lp, x[:, i], spec, sparse=modes[i], ws=ws, name=f"pre{i}") for i, lp in enumerate(params)]
    batch, d_out = x.shape[0], params[0].b_dec.shape[-1]
    base = torch.stack([lp.b_dec for lp in params]).expand(batch, n_layers, d_out)
    skips = [lp.skip for lp in params]
    if skips[0] is not None:
        base = base + torch.stack([x[:, j] @ skips[j] for j in range(n_layers)], 1)
    n_groups = len(groups) if groups else 1
    partial = [torch.zeros(batch, n_layers, d_out, dtype=x.dtype, device=x.device) for _ in range(n_groups)]
    for i, (code, lp) in enumerate(zip(codes, params)):
        for g, contribution in enumerate(decode_layer(code, lp, groups)):
            partial[g] = partial[g] + _pad_from(contribution.view(batch, n_layers - i, d_out), i, n_layers)
    outputs, running = [], base
    for part in partial:
        running = running + part
        outputs.append(running)
    return ForwardOut(codes, outputs)


def _pad_from(block: torch.Tensor, start: int, n_layers: int) -> torch.Tensor:
    """Place ``block`` [batch, L-start, d] at layers start..L-1 of a [batch, L, d] tensor."""
    if start == 0:
        return block
    return torch.nn.functional.pad(block, (0, 0, start, 0))
