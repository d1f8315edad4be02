"""Data-parallel training over ``torch.distributed`` (gloo on CPU, nccl on GPU).

Launch with torchrun; every rank reads its slice of each global batch, gradients
are averaged with one coalesced all-reduce, and every rank applies the same Adam
step, so parameters stay identical without broadcasting. Batch-level statistics
that losses depend on (the L0 of the quadratic penalty, BatchTopK's threshold,
dead-latent counts) are reduced over ranks, so the run matches a single process
on the same global batch up to floating-point summation order.

    torchrun --nproc-per-node 2 -m trainers run.yaml

Example:
    >>> with DistContext.from_env() as ctx:  # no torchrun variables: a single process
    ...     ctx.world, ctx.is_main, float(ctx.mean(torch.tensor(3.0)))
    (1, True, 3.0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """This process's place in the job and the collectives the trainer needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistContext:
        """Join the torchrun job described by ``RANK``/``WORLD_SIZE`` (if any) and pick the backend."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device(device)
        if world == 1:
            return cls(0, 1, dev)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of a tensor over ranks (a copy; the input is untouched)."""
        if self.world == 1:
            return value
        out = value.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def minimum(self, value: float) -> float:
        """Smallest value over ranks."""
        if self.world == 1:
            return value
        out = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return float(out.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on some rank (e.g. a SIGTERM seen by one of them)."""
        if self.world == 1:
            return flag
        out = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return bool(out.item() > 0)

    def union(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a bool tensor over ranks."""
        if self.world == 1:
            return mask
        out = mask.to(torch.float32)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out > 0

    def gather_cat(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenation of every rank's equally sized 1-D tensor."""
        if self.world == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks with one flat all-reduce (missing grads count as zero)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            update = flat[offset : offset + n].view(g.shape)
            if p.grad is None:
                p.grad = update.clone()
            else:
                p.grad.copy_(update)  # copy_ keeps the grad's own (possibly transposed) layout
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (once, at the end of a torchrun job).

        Skipping this is not harmless: at interpreter exit gloo's worker threads can
        still own tensors, and tearing them down then aborts the process
        ("terminate called without an active exception", SIGABRT) after a run that
        otherwise succeeded.
        """
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
