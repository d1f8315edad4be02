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

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from scope_hub.errors import ConfigError, PeerRankError

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
"""A collective waiting longer than this for a rank fails the job instead of hanging (a rank that dies
outright fails its peers' collectives at once; this bounds a rank that hangs)."""
FINAL_WAIT_TIMEOUT = datetime.timedelta(minutes=120)
"""Default of how long the other ranks wait at the end of a run while rank 0 evaluates and publishes
(``train.final_wait_minutes``): that work grows with ``eval.tokens`` and the dictionary's size, so it
gets its own bound instead of :data:`COLLECTIVE_TIMEOUT`."""
IN_PLACE_BYTES = 1 << 24
"""Gradients this big (16 MiB) are averaged in place by :meth:`DistContext.average_gradients`."""
FAILURE_NOTE_BYTES = 4096
"""Room for a failed rank's ``"ErrorType: message"`` in :meth:`DistContext.together` (longer ones are cut)."""

if TYPE_CHECKING:
    from trainers.latent_parallel import LatentGroup


@dataclass
class DistContext:
    """This process's place among the data-parallel ranks and the collectives the trainer needs.

    ``rank``/``world`` count data-parallel ranks (the data slices); under latent parallelism
    (:meth:`mesh`) that is one mesh dimension, ``group`` its process group, and ``job_rank``
    the rank in the whole job (rank 0 of the job is the one that writes).
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: Any = None
    """Process group of the data-parallel ranks (None: every rank of the job)."""
    job_rank: int | None = None
    """Rank in the whole job (None: the same as ``rank``)."""
    final_group: Any = None
    """A gloo group whose timeout is the end-of-run wait's (:meth:`final_wait`); None: the default group."""
    meshes: dict[int, tuple[DistContext, LatentGroup | None]] = field(default_factory=dict, repr=False, compare=False)
    """The meshes already built, by ``latent_parallel``: every dictionary of a run shares one."""

    @classmethod
    def from_env(cls, device: str = "cpu", final_wait: datetime.timedelta = FINAL_WAIT_TIMEOUT) -> DistContext:
        """Join the torchrun job described by ``RANK``/``WORLD_SIZE`` (if any) and pick the backend.

        ``final_wait`` bounds :meth:`final_wait` (the other ranks waiting for rank 0's evaluation and
        publish); every other collective fails after :data:`COLLECTIVE_TIMEOUT`.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device(device)
        if world == 1:
            return cls(0, 1, dev)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            store, rank, world = next(dist.rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
            # torchrun keeps one store across --max-restarts rounds: without a per-round prefix the
            # restarted ranks would read the dead round's addresses and fail to connect
            store = dist.PrefixStore(f"round_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        ctx = cls(dist.get_rank(), dist.get_world_size(), dev)
        ctx.prepare_final_wait(final_wait)
        return ctx

    def prepare_final_wait(self, timeout: datetime.timedelta) -> None:
        """Create the group :meth:`final_wait` waits on, with its own ``timeout`` (every rank calls this,
        at the start: creating a group is itself a collective, which rank 0 could not join once busy)."""
        if self.job_world > 1:
            self.final_group = dist.new_group(backend="gloo", timeout=timeout)

    @property
    def is_main(self) -> bool:
        """The job's rank 0 (writes checkpoints' state, exports, prints)."""
        return (self.rank if self.job_rank is None else self.job_rank) == 0

    @property
    def job_world(self) -> int:
        """Processes in the whole job."""
        return dist.get_world_size() if self.world > 1 or self.job_rank is not None else 1

    def mesh(self, latent_parallel: int) -> tuple[DistContext, LatentGroup | None]:
        """Split the job into a data-parallel x latent-parallel mesh (``torch.distributed.device_mesh``).

        Ranks ``[d*R, (d+1)*R)`` form latent group d (they share a data slice and split the
        latents); ranks with the same position in their groups average gradients. Returns the
        data-parallel context and this rank's latent group (None when ``latent_parallel`` is 1).
        Built once per run: the trainers of a multi-dictionary run all get the same mesh (each
        mesh creates process groups, which hold sockets and threads for the rest of the job).
        """
        if latent_parallel == 1:
            return self, None
        if latent_parallel not in self.meshes:
            self.meshes[latent_parallel] = self._build_mesh(latent_parallel)
        return self.meshes[latent_parallel]

    def _build_mesh(self, latent_parallel: int) -> tuple[DistContext, LatentGroup]:
        if self.world % latent_parallel:
            raise ConfigError(
                f"train.latent_parallel={latent_parallel} needs a multiple of {latent_parallel} processes, "
                f"got {self.world}: launch with torchrun --nproc-per-node {latent_parallel} (or a multiple)"
            )
        from torch.distributed.device_mesh import init_device_mesh

        from trainers.latent_parallel import LatentGroup

        dp = self.world // latent_parallel
        grid = init_device_mesh(self.device.type, (dp, latent_parallel), mesh_dim_names=("dp", "tp"))
        coordinate = grid.get_coordinate()
        if coordinate is None:  # every rank of the job is in the mesh; this would be a torch bug
            raise RuntimeError(f"rank {self.rank} is not in its own device mesh")
        dp_rank, tp_rank = coordinate
        data = DistContext(dp_rank, dp, self.device, grid.get_group("dp") if dp > 1 else None, self.rank)
        return data, LatentGroup(tp_rank, latent_parallel, grid.get_group("tp"))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of a tensor over ranks (a copy; the input is untouched)."""
        if self.world == 1:
            return value
        out = value.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out / self.world

    def minimum(self, value: float) -> float:
        """Smallest value over ranks."""
        if self.world == 1:
            return value
        out = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(out, op=dist.ReduceOp.MIN, group=self.group)
        return float(out.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on some rank of the job (e.g. a SIGTERM seen by one of them)."""
        if self.job_world == 1:
            return flag
        out = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return bool(out.item() > 0)

    def union(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a bool tensor over ranks."""
        if self.world == 1:
            return mask
        out = mask.to(torch.float32)
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out > 0

    def gather_cat(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenation of every rank's equally sized 1-D tensor."""
        if self.world == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(parts, values.contiguous(), group=self.group)
        return torch.cat(parts)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks (missing grads count as zero).

        Gradients of at least :data:`IN_PLACE_BYTES` are all-reduced in place, one collective each;
        the small rest travel in one flat all-reduce. A flat copy of every gradient would add a
        whole gradient's size to the step's memory peak.
        """
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # Split by the parameter's size, never by the gradient's layout: every rank must issue the same
        # collectives in the same order, whatever strides autograd gave its gradients.
        large = [p.grad for p in params if p.nbytes >= IN_PLACE_BYTES]
        small = [p.grad for p in params if p.nbytes < IN_PLACE_BYTES]
        for grad in large:
            buffer = grad if grad.is_contiguous() else grad.contiguous()
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
            buffer /= self.world
            if buffer is not grad:
                grad.copy_(buffer)
        if small:
            flat = torch.cat([g.reshape(-1) for g in small])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat /= self.world
            offset = 0
            for g in small:
                # copy_ keeps the grad's own (possibly transposed) layout
                g.copy_(flat[offset : offset + g.numel()].view(g.shape))
                offset += g.numel()

    def barrier(self) -> None:
        """Wait for every rank of the job."""
        if self.job_world > 1:
            dist.barrier()

    def final_wait(self) -> None:
        """Wait for every rank at the end of a run, while rank 0 evaluates and publishes: bounded by the
        ``final_wait`` given to :meth:`from_env` (:meth:`prepare_final_wait`), not :data:`COLLECTIVE_TIMEOUT`."""
        if self.job_world > 1:
            dist.barrier(group=self.final_group)

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run the block on every rank, then wait for all; an exception on any rank stops every rank here.

        The failing rank raises its own exception; every other rank raises
        :class:`~scope_hub.errors.PeerRankError` with the failing rank's number and message. A plain
        barrier would instead leave them waiting for a rank that never arrives until the collective
        timeout (a rank whose process stays up, or NCCL, which does not notice a peer leaving), and
        none of them would say why.
        """
        try:
            yield
        except Exception as error:
            self._share_failure(error)
            raise
        self._share_failure(None)

    def _share_failure(self, error: Exception | None) -> None:
        """Every rank's failure note (empty when it succeeded) in one all-gather; raise a peer's."""
        if self.job_world == 1:
            return
        note = torch.zeros(FAILURE_NOTE_BYTES, dtype=torch.uint8)
        if error is not None:
            text = f"{type(error).__name__}: {error}".encode()[: FAILURE_NOTE_BYTES - 1]
            note[0] = 1
            note[1 : 1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        notes = [torch.empty_like(note, device=self.device) for _ in range(dist.get_world_size())]
        dist.all_gather(notes, note.to(self.device))
        if error is not None:
            return  # the failing rank raises its own exception, with its traceback
        for rank, shared in enumerate(notes):
            if int(shared[0]):
                message = bytes(shared[1:].cpu().tolist()).rstrip(b"\0").decode(errors="replace")
                raise PeerRankError(
                    f"rank {rank} failed, so rank {dist.get_rank()} stops too: {message} "
                    f"(rank {rank}'s output has the traceback; fix that and run again)",
                    rank=rank,
                    error=message,
                )

    def close(self) -> None:
        """Leave the process group (once, at the end of a torchrun job).

        Skipping this is not harmless: at interpreter exit gloo's worker threads can
        still own tensors, and tearing them down then aborts the process
        ("terminate called without an active exception", SIGABRT) after a run that
        otherwise succeeded.
        """
        self._leave(graceful=True)

    def _leave(self, graceful: bool) -> None:
        if self.job_world > 1 and dist.is_initialized():
            if graceful:
                # Every rank reaches this point before any destroys the group: a rank that leaves
                # first takes rank 0's store (and gloo's pairs) with it while a peer still uses them.
                dist.barrier()
            dist.destroy_process_group()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._leave(graceful=exc_type is None)  # after an error a barrier could wait on a dead peer
