"""Module distribution: with many target dictionaries, each rank trains a subset on every token.

The dictionaries of a multi-target run (one per (layer, site)) are split over the N ranks
of a data-parallel job (:func:`plan_modules`: contiguous, as even as possible). Every rank
runs the model on its own slice of the batch and captures every target; one
``all_to_all`` then sends each target's rows to the rank that owns it
(:func:`exchange_activations`), which receives the whole global batch for its targets in
rank order (the rows of :func:`trainers.sources.rank_slice`). A rank keeps parameters,
gradients and Adam state only for the dictionaries it owns, so nothing is duplicated and
no gradient all-reduce is needed; 18 layers on 6 ranks train 3 each, as sparsify's
``distribute_modules`` does. Unlike sparsify's per-hookpoint all-gather, each activation
crosses the network once: a rank sends ``(N-1)/N`` of its captured bytes and receives as
much (:func:`exchange_bytes`; :func:`rank_exchange_bytes` exactly, for uneven plans).

``train.distribute_modules`` wires this into the multi-target pipeline
(:class:`DistributedModules`): a :class:`ModuleExchange` per rank does one exchange per step
for all targets, each owned Trainer reads whole batches through an :class:`ExchangedSource`
and runs as one process (:class:`OwnerContext`), and a :class:`StopVote` keeps every rank's
stop on the same step.

Example:
    >>> plan_modules(["l0", "l1", "l2", "l3", "l4"], world=3)
    [['l0', 'l1'], ['l2', 'l3'], ['l4']]
    >>> exchange_bytes({"l0": (4096, 640), "l1": (4096, 640)}, world=2)
    10485760
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from scope_hub.errors import ConfigError
from trainers.checkpoint import list_checkpoints, load_checkpoint, read_checkpoint_state
from trainers.config import TrainConfig
from trainers.distributed import DistContext
from trainers.sources import ActivationSource
from trainers.trainer import Trainer


def plan_modules(targets: Sequence[str], world: int) -> list[list[str]]:
    """Targets owned by each rank: contiguous blocks, the first ``len % world`` ranks one more."""
    if len(targets) < world:
        raise ConfigError(
            f"module distribution gives every rank at least one dictionary: {len(targets)} target(s) for "
            f"{world} ranks; use at most {len(targets)} processes, or train without distributing modules"
        )
    size, extra = divmod(len(targets), world)
    plan, start = [], 0
    for rank in range(world):
        stop = start + size + (rank < extra)
        plan.append(list(targets[start:stop]))
        start = stop
    return plan


def owned_targets(plan: list[list[str]], rank: int) -> list[str]:
    """The dictionaries ``rank`` trains."""
    return plan[rank]


def exchange_bytes(shapes: Mapping[str, tuple[int, ...]], world: int, element_size: int = 4) -> int:
    """Bytes one rank sends to the others per exchange (equal to what it receives with equal plans)."""
    total = sum(int(torch.Size(shape).numel()) for shape in shapes.values()) * element_size
    return total * (world - 1) // world


def exchange_activations(
    local: Mapping[str, torch.Tensor], plan: list[list[str]], rank: int, group: Any = None
) -> dict[str, torch.Tensor]:
    """Full-batch activations of this rank's targets from every rank's local ones (one ``all_to_all``).

    ``local`` maps every target to this rank's ``[b, ...]`` rows (the same targets, shapes and
    dtype on every rank); the result maps each target ``rank`` owns to ``[world * b, ...]``,
    rank 0's rows first.
    """
    world = len(plan)
    order = [t for owned in plan for t in owned]
    if sorted(order) != sorted(local):
        raise ConfigError(f"the module plan covers {sorted(order)} but activations came for {sorted(local)}")
    if world == 1:
        return {t: local[t] for t in plan[0]}
    dtypes = {v.dtype for v in local.values()}
    if len(dtypes) != 1:
        raise ConfigError(f"activations of every target must share one dtype to be exchanged, got {dtypes}")
    send = torch.cat([local[t].reshape(-1) for t in order])
    send_sizes = [sum(local[t].numel() for t in owned) for owned in plan]
    mine = plan[rank]
    per_source = sum(local[t].numel() for t in mine)  # every rank sends the same-shaped rows
    received = send.new_empty(per_source * world)
    dist.all_to_all_single(received, send, [per_source] * world, send_sizes, group=group)
    pieces = received.view(world, per_source)
    out, offset = {}, 0
    for t in mine:
        n, shape = local[t].numel(), local[t].shape
        out[t] = pieces[:, offset : offset + n].reshape(world * shape[0], *shape[1:])
        offset += n
    return out


def rank_exchange_bytes(
    shapes: Mapping[str, tuple[int, ...]], plan: list[list[str]], rank: int, element_size: int = 4
) -> int:
    """Bytes ``rank`` sends per exchange: its rows of every target another rank owns (exact for any plan).

    ``shapes`` are this rank's local ``(rows, ...)`` per target; :func:`exchange_bytes` is the mean over
    ranks when the plan is even.

    Example:
        >>> plan = plan_modules(["a", "b", "c"], world=2)  # [['a', 'b'], ['c']]
        >>> rank_exchange_bytes({"a": (2, 4), "b": (2, 4), "c": (2, 4)}, plan, rank=1)
        64
    """
    mine = set(plan[rank])
    return sum(int(torch.Size(s).numel()) for t, s in shapes.items() if t not in mine) * element_size


def _pack(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One ``[b, width]`` tensor per target (input, then the target when it is not the input)."""
    flat = x.reshape(x.shape[0], -1)
    if t is x:
        return flat
    dtype = torch.promote_types(x.dtype, t.dtype)
    return torch.cat([flat.to(dtype), t.reshape(t.shape[0], -1).to(dtype)], 1)


class ModuleExchange:
    """Per step, this rank's slice of every target's batch in, the whole batch of its own targets out.

    Every rank reads rows :func:`trainers.sources.rank_slice` of global batch ``step`` from each
    target's source and one :func:`exchange_activations` delivers them to the owners, so a rank
    asks for the same steps in the same order as its peers (the all_to_all is collective). Steps
    read while the trainers set up (normalisation, initialisation) are kept until :meth:`settle`,
    since each owned trainer reads them in turn; afterwards only the latest step is kept.
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        plan: list[list[str]],
        rank: int,
        device: torch.device | None = None,
        group: Any = None,
    ) -> None:
        self.sources, self.plan, self.rank, self.group = dict(sources), plan, rank, group
        self.device = device or torch.device("cpu")
        self.world = len(plan)
        self.owned = owned_targets(plan, rank)
        self._cache: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._keep_all = True
        self.exchanges = 0
        """Exchanges so far (one per step, plus the setup batches)."""
        self.sent_bytes = 0
        """Bytes this rank has sent to the others (:func:`rank_exchange_bytes` per exchange)."""

    def settle(self) -> None:
        """The trainers are set up: from now on keep only the newest step."""
        self._keep_all = False
        self._cache.clear()

    def batch(self, name: str, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch ``step`` of owned target ``name`` as ``(x, target)``, rank 0's rows first."""
        if step not in self._cache:
            if not self._keep_all:
                self._cache.clear()
            self._cache[step] = self._exchange(step, batch_size)
        return self._cache[step][name]

    def _exchange(self, step: int, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        local = {t: s.batch(step, batch_size, self.rank, self.world) for t, s in self.sources.items()}
        packed = {t: _pack(x, y) for t, (x, y) in local.items()}
        dtype = packed[next(iter(packed))].dtype
        for value in packed.values():
            dtype = torch.promote_types(dtype, value.dtype)  # lossless: one dtype crosses the network
        packed = {t: v.to(device=self.device, dtype=dtype) for t, v in packed.items()}
        self.exchanges += 1
        self.sent_bytes += rank_exchange_bytes(
            {t: tuple(v.shape) for t, v in packed.items()}, self.plan, self.rank, dtype.itemsize
        )
        whole = exchange_activations(packed, self.plan, self.rank, self.group)
        out = {}
        for t in self.owned:
            x, y = local[t]
            rows, width = whole[t], x[0].numel()
            xs = rows[:, :width].reshape(rows.shape[0], *x.shape[1:]).to(x.dtype)
            ys = xs if y is x else rows[:, width:].reshape(rows.shape[0], *y.shape[1:]).to(y.dtype)
            out[t] = (xs, ys)
        return out


class ExchangedSource(ActivationSource):
    """An owned target's source as its Trainer sees it: whole global batches through a :class:`ModuleExchange`.

    Shapes, provenance and held-out batches come from the target's own source (the owner evaluates
    alone); only training batches travel.
    """

    def __init__(self, exchange: ModuleExchange, name: str) -> None:
        self.exchange, self.name = exchange, name
        self.inner = exchange.sources[name]
        self.n_layers, self.d_in, self.d_out = self.inner.n_layers, self.inner.d_in, self.inner.d_out
        self.reconstructs_input = self.inner.reconstructs_input

    def describe(self) -> dict[str, Any]:
        return dict(self.inner.describe())

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch ``step`` (the owner's Trainer runs as one process: ``rank`` 0 of ``world`` 1)."""
        if (rank, world) != (0, 1):
            raise ConfigError("a distributed module's Trainer reads whole batches: give it a one-process context")
        return self.exchange.batch(self.name, step, batch_size)

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.inner.eval_batches(tokens, batch_size)


class StopVote:
    """One job-wide vote per lockstep round on stopping (SIGTERM on any rank stops every rank together).

    Ranks own different numbers of Trainers, so the Trainers' own stop checks cannot each be a
    collective: the first check of a round votes for the whole rank, the others reuse its answer,
    and a stop flag raised after the vote counts in the next round's.
    """

    def __init__(self, job: DistContext) -> None:
        self.job = job
        self._result: bool | None = None
        self._late = False

    def new_round(self) -> None:
        """Called by the driver before every round of steps."""
        self._result = None

    def __call__(self, flag: bool) -> bool:
        if self._result is None:
            self._result, self._late = self.job.any(flag or self._late), False
        elif flag and not self._result:
            self._late = True
        return self._result


@dataclass
class OwnerContext(DistContext):
    """A Trainer of a distributed module: one process on its data (no gradient all-reduce), stopping with the job."""

    vote: StopVote | None = None
    """The job-wide stop vote its stop checks go through."""

    def any(self, flag: bool) -> bool:
        return self.vote(flag) if self.vote is not None else flag


class DistributedModules:
    """Everything ``train.distribute_modules`` changes for one rank of a multi-target run.

    The rank trains only the targets :func:`plan_modules` gives it, each Trainer running as one
    process on whole global batches (:class:`ExchangedSource`); checkpoints, ``metrics.jsonl``,
    evaluation and the exported folder of a target are written by its owner, so each equals what
    a one-process multi-target run writes.
    """

    def __init__(self, cfg: TrainConfig, targets: list[Any], sources: list[ActivationSource], job: DistContext) -> None:
        if not cfg.multi_target:
            raise ConfigError(
                "train.distribute_modules=true splits the dictionaries of a multi-target run over ranks, but this "
                "run trains one dictionary: list several in harvest.layers / harvest.sites, or set "
                "train.distribute_modules=false (data parallelism)"
            )
        if cfg.train.batch_size % job.world:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} must be divisible by the {job.world} ranks of "
                "train.distribute_modules (each reads an equal slice of every batch)"
            )
        self.job, self.targets = job, targets
        names = [t.name for t in targets]
        self.plan = plan_modules(names, job.world)
        self.exchange = ModuleExchange(dict(zip(names, sources)), self.plan, job.rank, job.device, job.group)
        self.vote = StopVote(job)
        self.context = OwnerContext(0, 1, job.device, vote=self.vote)
        self.owned = [names.index(n) for n in self.exchange.owned]
        """Indices of the targets this rank trains."""

    def build(self) -> tuple[list[Any], list[ActivationSource], list[Trainer]]:
        """This rank's targets, their own sources (for evaluation) and their Trainers, resumed together."""
        targets = [self.targets[i] for i in self.owned]
        sources = [self.exchange.sources[t.name] for t in targets]
        cfgs = [t.cfg for t in targets]
        step = self.resume_step(cfgs)
        trainers = [
            Trainer(self.for_owner(c), ExchangedSource(self.exchange, t.name), self.context)
            for c, t in zip(cfgs, targets)
        ]
        self.start(trainers, cfgs, step)
        return targets, sources, trainers

    def one_rank_at_a_time(self) -> Iterator[None]:
        """Yields once, on this rank's turn (ranks in order, each waiting for the one before)."""
        for turn in range(self.job.world):
            if turn == self.job.rank:
                yield None
            self.job.final_wait()  # evaluation and publishing may outlast the collective timeout

    def resume_step(self, cfgs: list[TrainConfig]) -> int:
        """The newest step every target of the job has a checkpoint at (0: start over), agreed by all ranks.

        A job killed between two owners' checkpoints leaves targets at different steps; they must
        step together, so each resumes from the newest step they share.
        """
        common: set[int] | None = None
        had_checkpoints = False
        with self.job.together():  # a refusal on one rank stops every rank with its message
            for cfg in cfgs:
                found = _checkpoints(cfg)
                if found and read_checkpoint_state(found[-1])["fingerprint"] != cfg.fingerprint():
                    raise ConfigError(  # never start over on top of another run's checkpoints
                        f"{found[-1]} was written by a different configuration; give this run its own "
                        "train.checkpoint_dir or set train.resume=false to start over there"
                    )
                had_checkpoints |= bool(found)
                steps = {int(str(p).rstrip("/").rsplit("_", 1)[1]) for p in found}
                common = steps if common is None else common & steps
        candidates = sorted(common or set())
        agreed: int | None = None
        while True:  # each round lowers the bound until every rank has the step (0 always qualifies)
            mine = max((s for s in candidates if agreed is None or s <= agreed), default=0)
            lowest = int(self.job.minimum(float(mine)))
            if lowest == agreed:
                break
            agreed = lowest
        if lowest == 0 and self.job.any(had_checkpoints):
            # Starting over beside newer checkpoints would let their pruning delete the fresh ones.
            raise ConfigError(
                "the targets' checkpoints in train.checkpoint_dir share no step (a job killed between "
                "owners' checkpoints with train.keep_checkpoints too small to keep a common one); start over "
                "with a new train.checkpoint_dir, or keep train.keep_checkpoints >= 2"
            )
        return lowest

    def for_owner(self, cfg: TrainConfig) -> TrainConfig:
        """The owned target's config as its Trainer takes it: resumed here, not by the Trainer itself."""
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": False})})

    def start(self, trainers: list[Trainer], cfgs: list[TrainConfig], step: int) -> None:
        """After the Trainers are built: load the agreed checkpoint, then drop the setup batches."""
        if step:
            for trainer, cfg in zip(trainers, cfgs):
                path = next(p for p in _checkpoints(cfg) if str(p).rstrip("/").endswith(f"step_{step:09d}"))
                trainer.load_state(load_checkpoint(path))
        self.exchange.settle()


def _checkpoints(cfg: TrainConfig) -> list[Any]:
    root = cfg.train.checkpoint_dir
    return list_checkpoints(root) if root and cfg.train.resume else []
