"""Latent (tensor) parallelism for dictionaries too big for one device: each rank owns a slice of latents.

Rank r of a latent group of R holds latents ``[r*S/R, (r+1)*S/R)`` of every layer: its
columns of ``w_enc``/``b_enc``/``threshold`` and its rows of ``w_dec``; ``b_dec`` (and a
skip path) are replicated. Every rank of the group sees the same batch. One step:

1. ``pre_r = x @ w_enc_r + b_enc_r`` locally (no communication);
2. selection: JumpReLU/ReLU are local; TopK all-gathers each token's local top-k
   values (``B x k x R`` floats) to find the token's global k-th value, then keeps
   its local entries at or above it;
3. the partial decodes ``f_r @ w_dec_r`` (summed over the group, plus ``b_dec``: ``y``) and
   the per-token L0 of every layer travel in one all-reduce of ``B x (L*d_out + L)`` floats, whose backward is the
   identity (every rank computes the same loss from the same sums, so each already
   holds the full gradient with respect to them);
4. backward and Adam are local; the global gradient norm for clipping needs one
   more scalar all-reduce.

Per step each rank puts ``4·B·k`` bytes into the all-gather (TopK; it receives R times
that) and ``4·B·L·(d_out + 1)`` into the all-reduce (:func:`step_bytes`). Memory per rank
falls as 1/R for the weights, their gradients and Adam state, and for the
``[B, S]`` pre-activations; communication does not grow with S. Data parallelism
combines on a 2-D mesh (:meth:`trainers.distributed.DistContext.mesh`): each latent
group takes its own data slice and gradients are averaged between ranks holding
the same shard. The :class:`~trainers.trainer.Trainer` runs this when
``train.latent_parallel`` > 1.

Example:
    >>> shard_range(16384, rank=1, world=4)
    (4096, 8192)
    >>> step_bytes(batch=4096, k=32, latent_parallel=4, d_out=640)
    {'all_gather': 524288, 'all_reduce': 10502144}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from scope_hub.errors import ConfigError
from scope_hub.kinds import JUMPRELU, RELU, TOPK
from trainers.forward import ForwardOut, LayerCode, LayerParams, SparsitySpec, Workspace, decode_layer, encode_layer
from trainers.kernels import gather_pre, select_above, sparse_decode
from trainers.losses import residual_variance

SHARDED_PARAMETERS = ("w_enc", "b_enc", "threshold", "w_dec")
"""Parameter names (last path part) split over latents; the rest are replicated."""


def shard_range(d_sae: int, rank: int, world: int) -> tuple[int, int]:
    """Latents ``[lo, hi)`` owned by ``rank``; ``d_sae`` must split evenly."""
    if d_sae % world:
        raise ConfigError(
            f"dictionary.d_sae={d_sae} must be divisible by train.latent_parallel={world}: "
            "choose a width that splits evenly over the latent shards"
        )
    size = d_sae // world
    return rank * size, (rank + 1) * size


def step_bytes(batch: int, k: int | None, latent_parallel: int, d_out: int, n_layers: int = 1) -> dict[str, int]:
    """fp32 bytes one rank contributes per step to the latent group's collectives (its local batch ``batch``).

    The all-gather contributes each token's local top-k (and receives ``latent_parallel`` times
    that); the all-reduce carries the partial decode and per-token L0. Not counted: a few
    scalars (the clip norm, the stop flag).
    """
    gather = 4 * batch * k * n_layers if k and latent_parallel > 1 else 0
    reduce = 4 * batch * n_layers * (d_out + 1) if latent_parallel > 1 else 0
    return {"all_gather": gather, "all_reduce": reduce}


def is_sharded(name: str) -> bool:
    """Whether parameter ``name`` (``w_enc``, ``per_layer.2.w_dec``, ...) is split over latents."""
    return name.rsplit(".", 1)[-1] in SHARDED_PARAMETERS


def latent_dim(name: str, param: torch.Tensor) -> int:
    """The latent axis of a sharded parameter (``w_enc`` keeps latents last, the others first)."""
    return param.dim() - 1 if name.rsplit(".", 1)[-1] == "w_enc" else 0


@dataclass
class LatentGroup:
    """The ranks that share one batch and split the latents: this rank's place and the collectives."""

    rank: int
    size: int
    group: Any = None
    """The process group (None: every rank of the job)."""

    def range(self, d_sae: int) -> tuple[int, int]:
        return shard_range(d_sae, self.rank, self.size)

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum over the group, differentiable (identity backward; see the module doc)."""
        return _AllReduceSum.apply(partial, self.group) if self.size > 1 else partial

    def sum_(self, value: torch.Tensor) -> torch.Tensor:
        """In-place sum over the group of a tensor without autograd history."""
        if self.size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self.group)
        return value

    def cat(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's equally shaped ``values`` concatenated along ``dim`` in rank order."""
        if self.size == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.size)]
        dist.all_gather(parts, values.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def gather_to_first(self, shard: torch.Tensor, dim: int) -> torch.Tensor | None:
        """The full tensor on the group's first rank (None elsewhere): shards joined along ``dim``."""
        if self.size == 1:
            return shard
        first = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        parts = [torch.empty_like(shard) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(shard.contiguous(), parts, dst=first, group=self.group)
        return torch.cat(parts, dim=dim) if parts is not None else None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, partial, group):
        out = partial.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None  # every rank holds the same full gradient of the summed value


def global_kth(values: torch.Tensor, k: int, latents: LatentGroup) -> torch.Tensor:
    """Each row's k-th largest value over the whole group, from every rank's local top-k ``values``."""
    return latents.cat(values, dim=1).topk(k, dim=-1).values[:, -1:]


def _topk_threshold(pre: torch.Tensor, k: int, latents: LatentGroup) -> torch.Tensor:
    """Per-row threshold whose strict ``>`` keeps the global top-k (entries <= 0 drop: relu zeroes them)."""
    values = pre.topk(min(k, pre.shape[1]), dim=-1).values
    kth = global_kth(values, k, latents)
    return torch.nextafter(kth, torch.full_like(kth, -float("inf"))).clamp_min(0.0)


def encode_shard(
    lp: LayerParams,
    x: torch.Tensor,
    spec: SparsitySpec,
    latents: LatentGroup,
    *,
    sparse: bool,
    ws: Workspace | None = None,
    name: str = "pre",
) -> LayerCode:
    """This rank's features of one layer; ``l0_tokens`` is still the local count (summed by the caller)."""
    if spec.architecture in (JUMPRELU, RELU):
        return encode_layer(lp, x, spec, sparse=sparse, ws=ws, name=name)
    if spec.architecture != TOPK:
        raise ConfigError(
            f"train.latent_parallel supports topk, jumprelu and relu, not {spec.architecture} "
            "(BatchTopK's batch-wide cut would need every shard's candidate pool)"
        )
    k = spec.k or 1  # set for TopK (the config requires it)
    if not sparse:
        pre = torch.addmm(lp.b_enc, x, lp.w_enc)
        keep = pre.detach() > _topk_threshold(pre.detach(), k, latents)
        f = torch.relu(pre) * keep
        l0 = (f.detach() > 0).to(f.dtype).sum(-1)
        return LayerCode(f, None, pre.detach(), l0, (f.detach() > 0).any(0))
    with torch.no_grad():
        out = ws.get(name, (x.shape[0], lp.d_sae), x) if ws is not None else None
        pre = torch.addmm(lp.b_enc, x, lp.w_enc, out=out) if out is not None else torch.addmm(lp.b_enc, x, lp.w_enc)
        sel = select_above(pre, _topk_threshold(pre, k, latents))
    f = torch.relu(gather_pre(sel, x, lp.w_enc, lp.b_enc))
    active = f.detach() > 0
    fired = torch.zeros(lp.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, sel.cols[active], True)
    return LayerCode(f, sel, pre, sel.row_sum(active.to(f.dtype)), fired)


def _at_layer(block: torch.Tensor, start: int) -> torch.Tensor:
    """Place ``block`` [batch, L-start, d] at output layers start..L-1."""
    return torch.nn.functional.pad(block, (0, 0, start, 0)) if start else block


def forward_sharded(
    params: list[LayerParams],
    x: torch.Tensor,
    spec: SparsitySpec,
    latents: LatentGroup,
    *,
    sparse: bool | list[bool],
    ws: Workspace | None = None,
) -> ForwardOut:
    """:func:`trainers.forward.forward` over latent shards: the same outputs, per-token L0 summed over shards."""
    n_layers = len(params)
    modes = sparse if isinstance(sparse, list) else [sparse] * n_layers
    codes = [
        encode_shard(lp, x[:, i], spec, latents, sparse=modes[i], ws=ws, name=f"pre{i}") for i, lp in enumerate(params)
    ]
    batch, d_out = x.shape[0], params[0].b_dec.shape[-1]
    partial = torch.zeros(batch, n_layers, d_out, dtype=x.dtype, device=x.device)
    for i, (code, lp) in enumerate(zip(codes, params)):
        (contribution,) = decode_layer(code, lp, None)
        partial = partial + _at_layer(contribution.view(batch, n_layers - i, d_out), i)
    # one all-reduce carries the decode and every layer's L0
    summed = latents.sum(torch.cat([partial.reshape(batch, -1), torch.stack([c.l0_tokens for c in codes], 1)], 1))
    decoded, l0 = summed.split([n_layers * d_out, n_layers], dim=1)
    for i, code in enumerate(codes):
        code.l0_tokens = l0[:, i]
    base = torch.stack([lp.b_dec for lp in params]).expand(batch, n_layers, d_out)
    skips = [lp.skip for lp in params]
    if all(skip is not None for skip in skips):
        base = base + torch.stack([x[:, j] @ cast(torch.Tensor, skips[j]) for j in range(n_layers)], 1)
    return ForwardOut(codes, [base + decoded.view(batch, n_layers, d_out)])


def sharded_aux_k_loss(
    codes: list[LayerCode],
    params: list[LayerParams],
    x: torch.Tensor,
    residual: torch.Tensor,
    dead: torch.Tensor,
    k_aux: int,
    latents: LatentGroup,
    global_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """:func:`trainers.losses.aux_k_loss` over latent shards: each token's top-``k_aux`` dead latents of the group.

    ``dead`` is this rank's ``[L, S/R]`` slice; the decision to skip (no dead latent anywhere)
    is taken by the whole group so every rank runs the same collectives.
    """
    counts = latents.sum_(dead.sum(1).to(device=x.device, dtype=torch.float64))
    if not bool(counts.sum() > 0):
        return None
    batch, n_layers, d_out = residual.shape
    estimate = torch.zeros_like(residual)
    for i, (code, lp) in enumerate(zip(codes, params)):
        total = int(counts[i])
        if total == 0:
            continue
        k = min(k_aux, total)
        dead_cols = dead[i].nonzero().squeeze(1).to(x.device)
        with torch.no_grad():
            pool = code.pre.index_select(1, dead_cols)
            local = pool.topk(min(k, pool.shape[1]), dim=-1).values if pool.shape[1] else pool
            padded = torch.full((batch, k), -float("inf"), dtype=pool.dtype, device=pool.device)
            padded[:, : local.shape[1]] = local  # ranks with fewer dead latents than k pad with -inf
            kth = global_kth(padded, k, latents)
            masked = torch.full_like(code.pre, -float("inf")).index_copy_(1, dead_cols, pool)
            sel = select_above(masked, torch.nextafter(kth, torch.full_like(kth, -float("inf"))))
        activation = torch.relu(gather_pre(sel, x[:, i], lp.w_enc, lp.b_enc))
        block = sparse_decode(activation, sel, lp.w_dec_flat()).view(batch, n_layers - i, d_out)
        estimate = estimate + _at_layer(block, i)
    estimate = latents.sum(estimate)
    error = (estimate - residual).pow(2).sum()
    return error / residual_variance(residual, global_mean).clamp_min(1e-12)


def global_grad_norm(sharded: list[torch.Tensor], replicated: list[torch.Tensor], group: Any = None) -> torch.Tensor:
    """L2 norm of the full gradient: shard norms summed over ranks, replicated ones counted once."""
    ref = (sharded or replicated)[0]
    local = _sum_of_squares(sharded, ref.device)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=group)
    return (local + _sum_of_squares(replicated, ref.device)).sqrt()


def _sum_of_squares(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sum of every element squared, without ``g.pow(2)``'s gradient-sized temporary per tensor."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.stack(torch._foreach_norm(tensors)).square().sum()


def clip_sharded_gradients(
    named: list[tuple[str, torch.nn.Parameter]], max_norm: float | None, latents: LatentGroup
) -> float:
    """:func:`trainers.optim.clip_gradients` for a latent shard: the norm of the whole (unsharded) gradient."""
    if max_norm is None:
        return 0.0
    grads = [(n, p.grad) for n, p in named if p.grad is not None]
    norm = global_grad_norm(
        [g for n, g in grads if is_sharded(n)], [g for n, g in grads if not is_sharded(n)], latents.group
    )
    coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # torch.nn.utils.clip_grad_norm_'s rule
    torch._foreach_mul_([g for _, g in grads], coefficient)
    return float(norm)
