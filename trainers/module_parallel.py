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
much (:func:`exchange_bytes`).

Example:
    >>> plan_modules(["l0", "l1", "l2", "l3", "l4"], world=3)
    [['l0', 'l1'], ['l2', 'l3'], ['l4']]
    >>> exchange_bytes({"l0": (4096, 640), "l1": (4096, 640)}, world=2)
    10485760
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from scope_hub.errors import ConfigError


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
