"""Checking a graph against the real model: ablate or steer feature nodes, compare logit changes.

A graph predicts what happens to its logit nodes when features change:

* **direct**: only the edges from the changed features into the logits,
  ``sum_s (scale - 1) * A[logit, s]`` (edges already carry the activation);
* **total**: the change also propagated through the graph's feature rows,
  treating every downstream active feature as linear (slope 1 above its
  threshold; errors and unexplored features held fixed).

The **actual** change comes from running the model with the features changed
to ``scale * activation`` (``scale=0`` ablates) at their positions:

* ``mode="model"`` (default): the real model with real attention, norms and
  MLPs; the feature's decoder write changes at its MLP output (ScopedModel's
  steering semantics, the error term kept);
* ``mode="replacement"``: every MLP block replaced by its transcoder on the live
  input plus the clean run's error, held fixed (circuit-tracer's semantics);
* ``mode="frozen"``: the local replacement model itself: as ``replacement``, with
  attention patterns and norm scales also frozen at the clean run's values.
  Only the features' own nonlinearities remain, so for small changes that cross
  no threshold the graph's ``total`` prediction is exact (a check of the graph).

Logit changes are of the demeaned (pre-softcap) logits, the quantity logit nodes hold.

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> from scope_hub.analysis.circuits.attribution import attribute
    >>> model = tiny_gemma3().double()
    >>> tcs = [make_dictionary(make_config("transcoder", "relu", d_in=64, d_out=64, d_sae=8, site="mlp_in",
    ...        site_out="mlp_out", layer=L), dtype=torch.float64) for L in range(3)]
    >>> graph = attribute(torch.tensor([257, 104, 105, 33]), model, tcs, max_n_logits=1)
    >>> node = top_features(graph, k=1)[0]
    >>> result = check_interventions(graph, model, tcs, [node], scale=1.001)  # a tiny steer is ~linear
    >>> bool(torch.allclose(result.actual, result.predicted_direct, rtol=0.3, atol=1e-9))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scope_hub.analysis.circuits.attribution import resolve_dictionaries
from scope_hub.analysis.circuits.freeze import frozen
from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.replacement import final_hookpoint, record
from scope_hub.analysis.circuits.targets import demeaned_unembedding
from scope_hub.analysis.circuits.transcoder_set import Block, TranscoderSet
from scope_hub.errors import ConfigError
from scope_hub.hooks import capture, hook, replace, stop_after

MODES = ("model", "replacement", "frozen")


@dataclass
class InterventionResult:
    """Actual and predicted changes of each logit node for one intervention."""

    nodes: list[int]
    """The feature nodes changed."""
    scale: float
    """New activation = scale x old (0: ablation)."""
    mode: str
    """``model``, ``replacement`` or ``frozen`` (see the module docstring)."""
    logit_labels: list[str]
    actual: torch.Tensor
    """``[K]`` change of each demeaned logit in the intervened run."""
    predicted_direct: torch.Tensor
    """``[K]`` the graph's direct-edge prediction."""
    predicted_total: torch.Tensor
    """``[K]`` the graph's prediction propagated through its feature rows."""

    def table(self) -> str:
        """One line per logit: label, actual, direct and total predictions."""
        lines = [f"{'logit':>16} {'actual':>10} {'direct':>10} {'total':>10}"]
        for label, a, d, t in zip(self.logit_labels, self.actual, self.predicted_direct, self.predicted_total):
            lines.append(f"{label!r:>16} {float(a):>10.4f} {float(d):>10.4f} {float(t):>10.4f}")
        return "\n".join(lines)


def top_features(graph: Graph, k: int = 10, logit: int = 0) -> list[int]:
    """The ``k`` feature nodes with the largest |direct edge| into logit node ``logit``."""
    row = graph.rows[graph.row_of(graph.logit_node(logit)), : graph.n_features].abs()
    return row.argsort(descending=True)[: min(k, graph.n_features)].tolist()


def predict(graph: Graph, nodes: Sequence[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(direct, total) predicted change ``[K]`` of every logit node when ``nodes`` are scaled by ``scale``."""
    rows = graph.rows.double()
    relative = torch.zeros(graph.n_nodes, dtype=torch.float64)  # change of activation / activation
    relative[list(nodes)] = scale - 1.0
    logit_rows = rows[graph.row_nodes >= graph.logit_offset]
    direct = logit_rows @ relative
    fixed = torch.zeros(graph.n_nodes, dtype=torch.bool)
    fixed[list(nodes)] = True
    free = (graph.row_nodes < graph.n_features) & ~fixed[graph.row_nodes]
    targets, free_rows = graph.row_nodes[free], rows[free]
    activation = graph.activations.double()[targets]
    for _ in range(graph.n_layers + 1):  # the graph is a DAG over layers
        update = relative.clone()
        update[targets] = (free_rows @ relative) / activation
        if torch.equal(update, relative):
            break
        relative = update
    return direct, logit_rows @ relative


def total_effects(graph: Graph, logit: int = 0) -> torch.Tensor:
    """``[N]``: predicted change of logit node ``logit`` when each node alone doubles (x2) its value.

    The adjoint of :func:`predict`'s propagation, for all nodes at once (ablating
    a node predicts minus this). Downstream features respond linearly; errors,
    tokens and features without rows stay fixed.
    """
    rows = graph.rows.double()
    direct = rows[graph.row_of(graph.logit_node(logit))]
    is_feature_row = graph.row_nodes < graph.n_features
    targets, feature_rows = graph.row_nodes[is_feature_row], rows[is_feature_row]
    activation = graph.activations.double()[targets]
    total = direct.clone()
    for _ in range(graph.n_layers + 1):
        update = direct + (total[targets] / activation) @ feature_rows
        if torch.equal(update, total):
            break
        total = update
    return total


def check_interventions(
    graph: Graph,
    model: nn.Module,
    transcoders: Any = None,
    nodes: Iterable[int] = (),
    *,
    scale: float = 0.0,
    mode: str = "model",
    registry: Any = None,
) -> InterventionResult:
    """Change feature ``nodes`` to ``scale`` x their activation in a run and compare with the graph.

    ``model``/``transcoders``/``registry`` as for :func:`~.attribution.attribute` (the
    dictionaries the graph was built with).
    """
    nodes = [int(n) for n in nodes]
    if not nodes or any(not 0 <= n < graph.n_features for n in nodes):
        raise ConfigError(f"nodes must be feature nodes (0..{graph.n_features - 1}); got {nodes}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    base, dictionaries, _ = resolve_dictionaries(model, transcoders, registry)
    ts = TranscoderSet(base, dictionaries)
    ids = graph.input_ids.reshape(1, -1)
    runs = []
    for scales in ({}, {n: scale for n in nodes}):
        with contextlib.ExitStack() as stack:
            if mode == "model":
                _steering_hooks(stack, base, ts, graph, scales)
            else:
                _replacement_hooks(stack, base, ts, graph, scales, freeze=mode == "frozen")
            runs.append(_final_last(base, ts, ids))
    vectors, _ = demeaned_unembedding(base, graph.logit_ids)
    actual = (vectors.to(runs[0].dtype) @ (runs[1] - runs[0])).double().cpu()
    direct, total = predict(graph, nodes, scale)
    return InterventionResult(nodes, scale, mode, list(graph.logit_labels), actual, direct, total)


def _final_last(model: nn.Module, ts: TranscoderSet, ids: torch.Tensor) -> torch.Tensor:
    fin = final_hookpoint(ts)
    with torch.no_grad(), capture(model, [fin]) as acts, stop_after(model, fin):
        model(input_ids=ids, use_cache=False)
    return acts[fin][0, -1]


def _steering_hooks(
    stack: contextlib.ExitStack, model: nn.Module, ts: TranscoderSet, graph: Graph, scales: dict[int, float]
) -> None:
    """Add ``(scale - 1) x activation x decoder row`` at each feature's position and MLP output(s)."""
    adds: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for node, s in scales.items():
        layer, pos, index = graph.features[node].tolist()
        source = ts.block_for(layer)
        delta = (s - 1.0) * float(graph.activations[node])
        for target in ts.writes_to(source):
            vector = ts.decoder_vectors(source, target, torch.tensor([index]))[0] * delta
            adds.setdefault(target.layer, []).append((pos, vector.detach()))
    for layer, items in adds.items():
        stack.enter_context(hook(model, ts.mlp_out(layer), _adder(items)))


def _adder(items: list[tuple[int, torch.Tensor]]):
    def add(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        for pos, vector in items:
            out[:, pos] += vector.to(act.dtype)
        return out

    return add


def _replacement_hooks(
    stack: contextlib.ExitStack,
    model: nn.Module,
    ts: TranscoderSet,
    graph: Graph,
    scales: dict[int, float],
    freeze: bool = False,
) -> None:
    """Every MLP block -> its transcoder on the live input, features clamped, + the clean run's error."""
    rec = record(model, ts, graph.input_ids, torch.ones(graph.n_pos, dtype=torch.bool))
    if freeze:
        stack.enter_context(frozen(model, rec.state, "replay"))
    clamps: dict[int, list[tuple[int, int, float]]] = {}
    for node, s in scales.items():
        layer, pos, index = graph.features[node].tolist()
        clamps.setdefault(layer, []).append((pos, index, s * float(graph.activations[node])))
    inputs: dict[int, torch.Tensor] = {}
    features: dict[int, torch.Tensor] = {}

    def reader(block: Block):
        def read(x: torch.Tensor) -> None:
            inputs[block.layer] = x[0]
            f, _ = ts.encode(block, x[0])
            for pos, index, value in clamps.get(block.layer, []):
                f[pos, index] = value
            features[block.layer] = f

        return read

    def writer(layer: int):
        block = ts.block_at(layer)

        def write(act: torch.Tensor) -> torch.Tensor:
            if block is None:  # no dictionary: the clean MLP output, frozen
                return (rec.errors[layer] + rec.base[layer])[None].to(act.dtype)
            skip = ts.skip(block, inputs[layer])
            out = ts.decode_into(block, features) + rec.errors[layer] + (0 if skip is None else skip)
            return out[None].to(act.dtype)

        return write

    for block in ts.blocks:
        stack.enter_context(hook(model, block.hook_in, reader(block)))
    for layer in range(ts.n_layers):
        stack.enter_context(replace(model, ts.mlp_out(layer), writer(layer)))
