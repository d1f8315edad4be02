"""Harvesting while training: the kept-token stream cut into chunks, shared by every dictionary of a run.

The kept-token stream is cut into chunks of ``harvest.stream_window`` batches; a
chunk is harvested, shuffled with a seed of its own, and served batch by batch.
Batch ``s`` only depends on (seed, s), so resuming re-harvests at most one chunk.
The :class:`StreamingSource` of each dictionary reads its hookpoints out of one
:class:`StreamingHarvest`; under torchrun each rank runs its share of a chunk's
forwards and the rows are all-gathered. :func:`check_stream_fits` refuses, before
any forward, a run the data cannot feed, naming overrides that fit.

Example:
    >>> stream_tokens(10_000, batch_size=4096, window=16)  # 2 steps, but one chunk is 16 x 4096
    65536
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from scope_hub.errors import ConfigError
from trainers.config import TrainConfig
from trainers.data import TokenSequences, kept_positions
from trainers.distributed import DistContext
from trainers.harvest import Harvester, SiteSpec
from trainers.sources import ActivationSource, rank_slice, step_generator


def stream_tokens(tokens: int, batch_size: int, window: int) -> int:
    """Training tokens a streamed run reads: whole chunks of ``window`` batches covering its steps.

    Example:
        >>> stream_tokens(10_000, batch_size=4096, window=16)  # 2 steps, but one chunk is 16 x 4096
        65536
    """
    steps = max(1, tokens // batch_size)
    return -(-steps // window) * window * batch_size


def stream_fixes(tokens: int, batch_size: int, window: int, available: int) -> list[str]:
    """Overrides that make a streamed run fit in ``available`` training tokens (each alone, else combined).

    Example:
        >>> stream_fixes(10_000, batch_size=4096, window=16, available=20_000)
        ['harvest.stream_window=4', 'train.batch_size=1024']
    """
    fixes = []
    window_fit = next((w for w in range(window - 1, 0, -1) if stream_tokens(tokens, batch_size, w) <= available), None)
    if window_fit:
        fixes.append(f"harvest.stream_window={window_fit}")
    halvings = [batch_size >> i for i in range(1, batch_size.bit_length())]
    batch_fit = next((b for b in halvings if stream_tokens(tokens, b, window) <= available), None)
    if batch_fit:
        fixes.append(f"train.batch_size={batch_fit}")
    chunks = available // (window * batch_size)
    if chunks:
        fixes.append(f"train.tokens={chunks * window * batch_size}")
    if not fixes:  # one chunk of one batch per step: at most `available` tokens
        batch = next((b for b in [batch_size, *halvings] if b <= available), None)
        if batch:
            smaller = f" train.batch_size={batch}" if batch != batch_size else ""
            fixes.append(f"train.tokens={available // batch * batch}{smaller} harvest.stream_window=1")
    return fixes


def check_stream_fits(cfg: TrainConfig, n_train: int, n_eval: int) -> None:
    """Raise :class:`ConfigError` (with overrides that would fit) when streaming would run out of data."""
    tokens, batch, window = cfg.train.tokens, cfg.train.batch_size, cfg.harvest.stream_window
    needed = stream_tokens(tokens, batch, window)
    if needed <= n_train:
        return
    fixes = stream_fixes(tokens, batch, window, n_train)
    raise ConfigError(
        f"streaming needs {needed} training tokens but the data holds {n_train} (plus {n_eval} held out for "
        f"eval.tokens): train.tokens={tokens} is {cfg.steps} step(s) of train.batch_size={batch}, harvested in whole "
        f"chunks of harvest.stream_window={window} batches ({window * batch} tokens); "
        + (f"set {' or '.join(fixes)}, " if fixes else "")
        + "or harvest to disk (harvest.cache_dir=DIR, which allows several epochs), or add data"
    )


class StreamingHarvest:
    """Kept rows of every hookpoint, harvested on demand and shared by the dictionaries of a run.

    The kept-token stream is cut into chunks (see the module doc); the latest ``keep_chunks`` chunks
    and the latest held-out range are kept, so dictionaries driven in lockstep read each chunk from one
    forward (``keep_chunks`` covers what every trainer reads while it sets up, one after the other).
    """

    def __init__(
        self,
        harvester: Harvester,
        data: TokenSequences,
        *,
        seed: int,
        chunk: int,
        batch_sequences: int,
        keep_chunks: int = 1,
        ctx: DistContext | None = None,
    ) -> None:
        self.ctx = ctx or DistContext()
        self.harvester, self.data, self.seed, self.chunk = harvester, data, seed, chunk
        self.batch_sequences, self.keep_chunks = batch_sequences, keep_chunks
        self._widths: dict[str, int] | None = None
        keep = kept_positions(data.input_ids, data.attention_mask, harvester.bos_id, harvester.exclude_bos)
        self.kept_before = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
        self.total = int(self.kept_before[-1])
        self._chunks: dict[int, dict[str, torch.Tensor]] = {}
        self._range: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        self.forwards = 0
        """Model forwards run so far (tests and benchmarks check that several dictionaries share them)."""

    @property
    def widths(self) -> dict[str, int]:
        """Width of every hookpoint (one probe forward, the first time)."""
        if self._widths is None:  # every rank probes: no collective, whatever order ranks ask in
            probe = self.harvester(self.data.input_ids[:1], self.data.attention_mask[:1])
            self._widths = {str(h): probe[str(h)].shape[-1] for h in self.harvester.spec.hookpoints}
        return self._widths

    def rows(self, start: int, end: int) -> dict[str, torch.Tensor]:
        """Kept rows ``start:end`` of the stream, per hookpoint (harvesting the windows that hold them)."""
        if self._range is not None and self._range[0] == (start, end):
            return self._range[1]
        first = int(torch.searchsorted(self.kept_before, start, right=True)) - 1
        last = int(torch.searchsorted(self.kept_before, end, right=False))
        groups = list(range(first, last, self.batch_sequences))
        names = [str(h) for h in self.harvester.spec.hookpoints]
        parts = {}
        for lo in groups[self.ctx.rank :: self.ctx.world]:  # under torchrun: this rank's share of the forwards
            hi = min(lo + self.batch_sequences, last)
            rows = self.harvester(self.data.input_ids[lo:hi], self.data.attention_mask[lo:hi])
            parts[lo] = torch.cat([rows[k] for k in names], 1)
            self.forwards += 1
        if self.ctx.world > 1:
            parts = self._exchange(parts, groups, last)
        flat = torch.cat([parts[lo] for lo in groups])
        offset = start - int(self.kept_before[first])
        flat = flat[offset : offset + end - start]
        bounds = torch.tensor([0, *[self.widths[k] for k in names]]).cumsum(0).tolist()
        out = {k: flat[:, bounds[i] : bounds[i + 1]] for i, k in enumerate(names)}
        self._range = ((start, end), out)
        return out

    def _exchange(self, mine: dict[int, torch.Tensor], groups: list[int], last: int) -> dict[int, torch.Tensor]:
        """Every rank's harvested groups on every rank (one all-gather; row counts are known from the
        token data, so only activations travel)."""
        world, rank = self.ctx.world, self.ctx.rank
        width = sum(self.widths.values())
        counts = {
            lo: int(self.kept_before[min(lo + self.batch_sequences, last)] - self.kept_before[lo]) for lo in groups
        }
        owned = [groups[r::world] for r in range(world)]
        rows_of = [sum(counts[lo] for lo in owned[r]) for r in range(world)]
        padded = torch.zeros(max(rows_of), width)
        if mine:
            local = torch.cat([mine[lo] for lo in owned[rank]])
            padded[: local.shape[0]] = local
        gathered = self.ctx.gather_cat(padded.reshape(-1).to(self.ctx.device)).cpu().view(world, -1, width)
        out = {}
        for r in range(world):
            offset = 0
            for lo in owned[r]:
                out[lo] = gathered[r, offset : offset + counts[lo]]
                offset += counts[lo]
        return out

    def chunk_rows(self, index: int, n_train: int) -> dict[str, torch.Tensor]:
        """Chunk ``index`` of the training stream, shuffled with its own seed."""
        if index not in self._chunks:
            start = index * self.chunk
            if start + self.chunk > n_train:
                raise ValueError(
                    f"streaming data exhausted at chunk {index}: {n_train} training tokens; "
                    "add data, lower train.tokens, or harvest to disk (harvest.cache_dir) for epochs"
                )
            rows = self.rows(start, start + self.chunk)
            perm = torch.randperm(self.chunk, generator=step_generator(self.seed, index, stream=2))
            self._chunks[index] = {k: v[perm] for k, v in rows.items()}
            while len(self._chunks) > self.keep_chunks:
                del self._chunks[next(iter(self._chunks))]  # the oldest
        return self._chunks[index]


class StreamingSource(ActivationSource):
    """Harvest while training (see module doc); the last ``eval_tokens`` kept rows are held out.

    Sources of several dictionaries share one :class:`StreamingHarvest` (``shared``); ``spec`` picks
    this source's hookpoints (default: the harvester's own).
    """

    def __init__(
        self,
        harvester: Harvester,
        data: TokenSequences,
        *,
        seed: int,
        batch_size: int,
        window: int,
        batch_sequences: int = 8,
        eval_tokens: int = 0,
        spec: SiteSpec | None = None,
        shared: StreamingHarvest | None = None,
    ) -> None:
        self.stream = shared or StreamingHarvest(
            harvester, data, seed=seed, chunk=batch_size * window, batch_sequences=batch_sequences
        )
        self.data, self.spec = data, spec or harvester.spec
        self.chunk = self.stream.chunk
        self.n_eval = min(eval_tokens, self.stream.total // 2)
        self.n_train = self.stream.total - self.n_eval
        self.n_layers = len(self.spec.layers)
        self.d_in = self.stream.widths[str(self.spec.inputs[0])]
        self.d_out = self.stream.widths[str((self.spec.outputs or self.spec.inputs)[0])]
        self.reconstructs_input = self.spec.outputs is None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.data.description, "dataset_sha256": self.data.sha256}

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        per_chunk = self.chunk // batch_size
        rows = self.stream.chunk_rows(step // per_chunk, self.n_train)
        lo = (step % per_chunk) * batch_size
        mine = rank_slice(batch_size, rank, world)
        picked = {k: v[lo : lo + batch_size][mine] for k, v in rows.items()}
        return self.spec.stack(picked)

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self.n_train
        end = start + min(tokens, self.n_eval)
        for lo in range(start, end, batch_size):
            yield self.spec.stack(self.stream.rows(lo, min(lo + batch_size, end)))
