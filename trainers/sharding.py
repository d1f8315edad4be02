"""Latent (tensor) parallelism for dictionaries too big for one device: each rank owns a slice of latents.

Rank r of R holds latents ``[r*S/R, (r+1)*S/R)``: its columns of ``w_enc``/``b_enc``/
``threshold`` and its rows of ``w_dec``; ``b_dec`` (and a skip path) are replicated.
Every rank sees the same batch. One step:

1. ``pre_r = x @ w_enc_r + b_enc_r`` locally (no communication);
2. selection: JumpReLU/ReLU are local; TopK all-gathers each token's local top-k
   values (``B x k x R`` floats) to find the token's global k-th value, then keeps
   its local entries at or above it;
3. ``y = all_reduce_sum(f_r @ w_dec_r) + b_dec``: one all-reduce of ``B x d`` per
   step, whose backward is the identity (every rank computes the same loss from
   the same ``y``, so each already holds the full ``dL/dy``);
4. per-token L0 (JumpReLU penalty): one all-reduce of ``B`` floats;
5. backward and Adam are local; only the global gradient norm for clipping
   needs one more scalar all-reduce.

Memory per rank falls as 1/R for the weights, their gradients and Adam state,
and for the ``[B, S]`` pre-activations; communication is O(B·(d + k·R)) per step,
independent of S. Combine with data parallelism by giving each latent-parallel
group its own data slice and averaging gradients within same-shard ranks.

This module is the tested building block (``tests/trainers/test_sharding.py``:
2 gloo ranks match one process); the :class:`~trainers.trainer.Trainer` does not
use it yet (see docs/training.md).

Example:
    >>> shard_range(16384, rank=1, world=4)
    (4096, 8192)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from scope_hub.kinds import JUMPRELU, RELU, TOPK
from trainers.forward import LayerParams, SparsitySpec
from trainers.kernels import JumpReLUSTE, gather_pre, select_above, sparse_decode


def shard_range(d_sae: int, rank: int, world: int) -> tuple[int, int]:
    """Latents ``[lo, hi)`` owned by ``rank``; ``d_sae`` must split evenly."""
    if d_sae % world:
        raise ValueError(f"d_sae={d_sae} must be divisible by the number of latent shards ({world})")
    size = d_sae // world
    return rank * size, (rank + 1) * size


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, partial):
        out = partial.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad  # every rank holds the same full dL/dy


def all_reduce_sum(partial: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable (identity backward; see module doc)."""
    return _AllReduceSum.apply(partial) if dist.is_initialized() and dist.get_world_size() > 1 else partial


def sharded_forward(lp: LayerParams, x: torch.Tensor, spec: SparsitySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [B, d_out], l0_tokens [B])`` of a latent-sharded single-layer dictionary (sparse path)."""
    with torch.no_grad():
        pre = torch.addmm(lp.b_enc, x, lp.w_enc)
        if spec.architecture == TOPK:
            values = pre.topk(min(spec.k, pre.shape[1]), dim=-1).values
            parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, values.contiguous())
            kth = torch.cat(parts, dim=1).topk(spec.k, dim=-1).values[:, -1:]  # the token's global k-th value
            # keep >= k-th (strict > on the next float down); entries <= 0 are dropped: relu zeroes them anyway
            sel = select_above(pre, torch.nextafter(kth, torch.full_like(kth, -float("inf"))).clamp_min(0.0))
        elif spec.architecture == JUMPRELU:
            sel = select_above(pre, lp.threshold.detach() - spec.bandwidth / 2)
        elif spec.architecture == RELU:
            sel = select_above(pre, torch.tensor(0.0))
        else:
            raise NotImplementedError(
                "latent sharding supports topk, jumprelu and relu (BatchTopK needs a "
                "global batch threshold: gather the per-shard pools as in kernels.select_batch_topk)"
            )
    values = gather_pre(sel, x, lp.w_enc, lp.b_enc)
    if spec.architecture == JUMPRELU:
        f, step = JumpReLUSTE.apply(values, lp.threshold.index_select(0, sel.cols), spec.bandwidth)
    else:
        f = torch.relu(values)
        step = (f.detach() > 0).to(f.dtype)
    local_l0 = sel.row_sum(step)
    y = all_reduce_sum(sparse_decode(f, sel, lp.w_dec_flat())) + lp.b_dec
    return y, all_reduce_sum(local_l0)


def global_grad_norm(sharded: list[torch.Tensor], replicated: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the full gradient: shard norms summed over ranks, replicated ones counted once."""
    local = sum((g.pow(2).sum() for g in sharded), torch.zeros(()))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return (local + sum((g.pow(2).sum() for g in replicated), torch.zeros(()))).sqrt()
