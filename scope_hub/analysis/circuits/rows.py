"""Rows of the attribution graph: batched backward passes and the contraction into edges.

For a batch of ``B`` targets, one backward pass of ``sum_b <v_b, read_b>``
through the replay (``B`` prompt copies) leaves, in copy ``b``, the gradient of
target ``b`` at every token embedding and every MLP block output. An edge is
then ``source vector . gradient``:

* token ``p``: the embedding at ``p`` with the gradient at the embedding, position ``p``;
* error ``(L, p)``: the error vector with the gradient at block ``L``'s output;
* feature ``(L, p, k)``: ``activation x decoder row`` with the gradient at every
  block it writes to (one for transcoders; ``L`` and every later layer for a CLT).

Feature edges are one ``bmm`` per (source block, target block): features are
padded per position into ``[T, K_max, d]`` (cached up to ``DECODER_CACHE_BYTES``)
and multiplied with the gradients laid out ``[T, d, B]``.

Rows go into one dense buffer ``[R, N]`` (rows are dense over their sources:
attention reaches every earlier position). When only some feature rows are
wanted, features are visited greedily by their current influence on the logits
(circuit-tracer's order), re-ranked every ``update_interval`` batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scope_hub.analysis.circuits.pruning import influence
from scope_hub.analysis.circuits.replacement import Recording, Replay, replay
from scope_hub.analysis.circuits.targets import LogitTargets
from scope_hub.analysis.circuits.transcoder_set import Block, TranscoderSet

DECODER_CACHE_BYTES = 1 << 30
"""Activation-scaled decoder rows kept between backward passes."""


class RowBuilder:
    """Computes incoming-edge rows for batches of targets and keeps them in one dense buffer."""

    def __init__(self, ts: TranscoderSet, rec: Recording, tg: LogitTargets) -> None:
        self.ts, self.rec, self.tg = ts, rec, tg
        self.n_feat, self.n_pos, self.n_layers = len(rec.features), rec.n_pos, ts.n_layers
        self.error_offset = self.n_feat
        self.token_offset = self.n_feat + self.n_layers * self.n_pos
        self.logit_offset = self.token_offset + self.n_pos
        self.n_nodes = self.logit_offset + len(tg)
        self.n_backward = 0
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._decoders: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_bytes = 0

    # -- exploration order --
    def explore(
        self, rp: Replay, batch: int, budget: int, update_interval: int, log: Callable[[str], None] = lambda _: None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit rows, then ``budget`` feature rows; returns (rows ``[R, N]``, row node ids), sorted by node."""
        k = len(self.tg)
        rows = torch.zeros(k + budget, self.n_nodes, dtype=rp.embed.dtype)
        row_nodes = torch.empty(k + budget, dtype=torch.long)
        for start in range(0, k, batch):
            chunk = torch.arange(start, min(start + batch, k))
            rows[chunk] = self._rows(rp, logits=chunk).to(rows.device)  # the buffer stays in host memory
            row_nodes[chunk] = self.logit_offset + chunk
        visited = torch.zeros(self.n_feat, dtype=torch.bool)
        filled = k
        while filled < k + budget:
            queue = self._next_features(
                rows[:filled],
                row_nodes[:filled],
                visited,
                budget - (filled - k),
                update_interval * batch,
                budget == self.n_feat,
            )
            for start in range(0, queue.numel(), batch):
                chunk = queue[start : start + batch]
                rows[filled : filled + chunk.numel()] = self._rows(rp, features=chunk).to(rows.device)
                row_nodes[filled : filled + chunk.numel()] = chunk
                visited[chunk] = True
                filled += chunk.numel()
            log(f"{filled - k}/{budget} feature rows, {self.n_backward} backward passes")
        order = row_nodes.argsort()
        return rows[order], row_nodes[order]

    def _next_features(
        self,
        rows: torch.Tensor,
        row_nodes: torch.Tensor,
        visited: torch.Tensor,
        remaining: int,
        queue_size: int,
        everything: bool,
    ) -> torch.Tensor:
        pending = (~visited).nonzero(as_tuple=True)[0]
        if everything:  # all rows wanted: layer order keeps each backward pass shallow
            return pending
        weights = torch.zeros(self.n_nodes, dtype=torch.float64)
        weights[self.logit_offset :] = self.tg.probabilities.double()
        scores = influence(row_nodes, rows, weights)[: self.n_feat]
        ranked = pending[scores[pending].argsort(descending=True)]
        return ranked[: min(queue_size, remaining)]

    # -- one backward pass --
    def _rows(
        self, rp: Replay, logits: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        objective = self._objective(rp, logits, features)
        inputs = [rp.embed] + [rp.block_out[L] for L in range(self.n_layers)]
        grads = torch.autograd.grad(objective, inputs, retain_graph=True, allow_unused=True)
        self.n_backward += 1
        n = logits.numel() if logits is not None else features.numel() if features is not None else 0
        with torch.no_grad():
            return self._contract(grads[0], dict(enumerate(grads[1:])), n)

    def _objective(self, rp: Replay, logits: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        if logits is not None:
            slots = torch.arange(logits.numel())
            read = rp.final_output()[slots, self.n_pos - 1]
            return (read * self.tg.vectors[logits].to(read.dtype)).sum()
        f = self.rec.features
        total = rp.embed.new_zeros(())
        if features is None:
            return total
        features = features.to(f.layer.device)  # chosen on the host; the recording may live on a GPU
        for layer in f.layer[features].unique().tolist():
            slots = (f.layer[features] == layer).nonzero(as_tuple=True)[0]
            chosen = features[slots]
            vectors = self.ts.encoder_vectors(self.ts.block_for(layer), f.index[chosen])
            read = rp.block_in[layer][slots, f.pos[chosen]]
            total = total + (read * vectors.to(read.dtype)).sum()
        return total

    def _contract(self, g_embed: torch.Tensor | None, g_out: dict[int, torch.Tensor | None], n: int) -> torch.Tensor:
        """Edges of ``n`` targets from their gradients: ``source vector . gradient`` for every source."""
        row = torch.zeros(n, self.n_nodes, dtype=self.rec.embed.dtype, device=self.rec.embed.device)
        if g_embed is not None:
            row[:, self.token_offset : self.logit_offset] = (g_embed[:n] * self.rec.embed).sum(-1)
        for layer, g in g_out.items():
            if g is not None:
                start = self.error_offset + layer * self.n_pos
                row[:, start : start + self.n_pos] = (g[:n] * self.rec.errors[layer]).sum(-1)
        for source in self.ts.blocks:
            a, b = self.rec.features.offsets[source.layer]
            for target in self.ts.writes_to(source):
                g = g_out.get(target.layer)
                if g is not None and b > a:
                    row[:, a:b] += self._feature_edges(source, target, g[:n], a, b)
        return row

    def _feature_edges(self, source: Block, target: Block, g: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """``[n, b - a]`` edges from ``source``'s features: one bmm over positions (features padded per position)."""
        index, valid = self._layout(source, a, b)
        vectors = self._decoders.get((source.layer, target.layer))
        if vectors is None:
            f = self.rec.features
            safe = index.clamp(min=0)
            vectors = self.ts.decoder_vectors(source, target, f.index[safe].reshape(-1)).reshape(*index.shape, -1)
            vectors = vectors * (f.activation[safe] * valid)[..., None].to(vectors.dtype)
            if self._cached_bytes + vectors.numel() * vectors.element_size() <= DECODER_CACHE_BYTES:
                self._decoders[(source.layer, target.layer)] = vectors
                self._cached_bytes += vectors.numel() * vectors.element_size()
        out = torch.bmm(vectors.to(g.dtype), g.permute(1, 2, 0))  # [T, K_max, n]
        return out[valid].T

    def _layout(self, source: Block, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``a..b`` of a block as ``[T, K_max]`` global indices (-1: padding) and a validity mask."""
        if source.layer not in self._layouts:
            pos = self.rec.features.pos[a:b]
            counts = torch.bincount(pos, minlength=self.n_pos)
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(b - a, device=pos.device) - starts[pos]
            width = max(1, int(counts.max()) if b > a else 1)
            index = torch.full((self.n_pos, width), -1, dtype=torch.long, device=pos.device)
            index[pos, slot] = torch.arange(a, b, device=pos.device)
            self._layouts[source.layer] = (index, index >= 0)
        return self._layouts[source.layer]

    # -- bias pass --
    def values_and_bias(self, model: nn.Module, row_nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's value in the real forward and its bias (the read with every source zeroed)."""
        f, rec = self.rec.features, self.rec
        is_feature = row_nodes < self.n_feat
        feats = row_nodes[is_feature].to(f.layer.device)
        logit_k = row_nodes[~is_feature] - self.logit_offset
        with replay(model, self.ts, rec, 1, mode="bias") as zero:
            bias_feat = torch.zeros(feats.numel(), dtype=torch.float64, device=f.layer.device)
            for layer in f.layer[feats].unique().tolist():
                sel = (f.layer[feats] == layer).nonzero(as_tuple=True)[0]
                block = self.ts.block_for(layer)
                idx, pos = f.index[feats[sel]], f.pos[feats[sel]]
                vectors = self.ts.encoder_vectors(block, idx)
                read = zero.block_in[layer][0, pos]
                b_enc = self.ts.b_enc(block)[idx]
                bias_feat[sel] = ((read * vectors.to(read.dtype)).sum(-1) + b_enc.to(read.dtype)).double()
            bias_logit = self.tg.values(zero.final_output()[0, -1]).double()[logit_k.to(f.layer.device)]
        values = torch.cat([f.pre[feats].double(), self.tg.values(rec.final[-1]).double()[logit_k.to(f.layer.device)]])
        return values.cpu(), torch.cat([bias_feat, bias_logit]).cpu()
