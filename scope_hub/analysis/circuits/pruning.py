"""Pruning a graph by influence on the chosen logits (circuit-tracer's rule, on row storage).

Influence (circuit-tracer ``graph.py``): take the adjacency with absolute
weights, normalise every target's incoming weights to sum to 1 (``Â``), and
weight the logit nodes by their probabilities ``w``. A node's influence is
``(w Â + w Â² + ...)[node]``: the fraction of the logits' input that flows
through it along all paths. Pruning then

1. keeps the nodes holding ``node_threshold`` of the total influence (tokens and
   logits always stay);
2. recomputes influence on the graph restricted to those nodes and scores each
   edge by ``Â[t, s] * (influence[t] + w[t])``; keeps the edges holding
   ``edge_threshold`` of the total score;
3. repeatedly drops feature/error nodes left without outgoing edges and feature
   nodes left without incoming ones.

The graph is a DAG (layers only feed later layers), so the power series ends
after at most ``n_layers + 2`` terms.

Example:
    >>> import torch
    >>> rows = torch.tensor([[0.0, 1.0, 0.0],    # node 0 <- node 1
    ...                      [3.0, 1.0, 0.0]])   # node 2 (the logit) <- node 0 (3.0), node 1 (1.0)
    >>> influence(torch.tensor([0, 2]), rows, torch.tensor([0.0, 0.0, 1.0])).tolist()
    [0.75, 1.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scope_hub.analysis.circuits.graph import Graph
from scope_hub.errors import ConfigError


def normalized(rows: torch.Tensor) -> torch.Tensor:
    """``|rows|`` with every row scaled to sum to 1 (all-zero rows stay zero)."""
    a = rows.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def influence(row_nodes: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``(w Â + w Â² + ...)`` per node, for rows ``[R, N]`` of targets ``row_nodes`` and start weights ``w`` ``[N]``."""
    a = normalized(rows)
    current = weights.to(a.dtype)[row_nodes] @ a
    total = current.clone()
    for _ in range(max_iter):
        current = current[row_nodes] @ a
        if not bool(current.any()):
            return total
        total += current
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the graph has a cycle")


def logit_weights(graph: Graph) -> torch.Tensor:
    """``[N]``: the logit nodes' probabilities, zero elsewhere."""
    w = torch.zeros(graph.n_nodes, dtype=torch.float64)
    w[graph.logit_offset :] = graph.logit_probs.double()
    return w


def node_influence(graph: Graph) -> torch.Tensor:
    """Influence of every node on the logits ``[N]`` (fp64)."""
    return influence(graph.row_nodes, graph.rows.double(), logit_weights(graph))


def find_threshold(scores: torch.Tensor, keep: float) -> float:
    """The smallest score among the top scores holding a fraction ``keep`` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    if ordered.numel() == 0:
        return float("inf")
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(keep, dtype=cumulative.dtype))), ordered.numel() - 1)
    return float(ordered[index])


@dataclass
class PruneResult:
    """Which nodes and edges survive pruning."""

    node_mask: torch.Tensor
    """``[N]`` kept nodes."""
    edge_mask: torch.Tensor
    """``[R, N]`` kept edges (same layout as ``graph.rows``)."""
    cumulative_scores: torch.Tensor
    """``[N]`` each node's cumulative influence rank in [0, 1] (circuit-tracer's ``influence`` field)."""
    influence: torch.Tensor
    """``[N]`` node influence on the logits in the unpruned graph."""
    node_threshold: float = 0.8
    """Fraction of node influence the node pruning kept."""
    edge_threshold: float = 0.98
    """Fraction of edge score the edge pruning kept."""

    def kept_influence(self, graph: Graph) -> float:
        """Fraction of the feature and error nodes' total influence held by the kept ones."""
        inner = slice(0, graph.token_offset)
        total = self.influence[inner].sum()
        return float(self.influence[inner][self.node_mask[inner]].sum() / total.clamp(min=1e-30))

    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """circuit-tracer's ``prune_graph`` on ``graph``; thresholds are fractions of influence kept."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    w = logit_weights(graph)
    node_inf = node_influence(graph)
    node_mask = node_inf >= find_threshold(node_inf, node_threshold)
    node_mask[graph.token_offset :] = True  # tokens and logits always stay

    rows = graph.rows.double() * node_mask[graph.row_nodes, None] * node_mask[None, :]
    a = normalized(rows)
    pruned_inf = influence(graph.row_nodes, rows, w) + w
    scores = a * pruned_inf[graph.row_nodes, None]
    edge_mask = scores >= find_threshold(scores[scores > 0], edge_threshold)
    edge_mask &= scores > 0
    _drop_dangling(graph, node_mask, edge_mask)
    return PruneResult(node_mask, edge_mask, _cumulative(node_inf), node_inf, node_threshold, edge_threshold)


def _drop_dangling(graph: Graph, node_mask: torch.Tensor, edge_mask: torch.Tensor) -> None:
    is_feature = torch.zeros_like(node_mask)
    is_feature[: graph.n_features] = True
    inner = graph.token_offset  # features and errors must feed something
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[graph.row_nodes, None] & node_mask[None, :]
        node_mask[:inner] &= edge_mask.any(0)[:inner]
        has_in = torch.zeros_like(node_mask)
        has_in[graph.row_nodes] = edge_mask.any(1)
        node_mask &= ~is_feature | has_in  # features must be explained by something
        if torch.equal(before, node_mask):
            return


def _cumulative(node_inf: torch.Tensor) -> torch.Tensor:
    ordered, order = node_inf.sort(descending=True)
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    out = torch.zeros_like(node_inf)
    out[order] = cumulative
    return out


def graph_scores(graph: Graph) -> tuple[float, float]:
    """circuit-tracer's (replacement score, completeness score).

    Replacement: the fraction of token-to-logit influence that flows through
    features rather than error nodes. Completeness: the influence-weighted
    fraction of nodes' inputs that does not come from error nodes.
    """
    w = logit_weights(graph)
    node_inf = node_influence(graph)
    errors = slice(graph.error_offset, graph.token_offset)
    token_inf = node_inf[graph.token_offset : graph.logit_offset].sum()
    error_inf = node_inf[errors].sum()
    replacement = float(token_inf / (token_inf + error_inf).clamp(min=1e-30))
    a = normalized(graph.rows.double())
    non_error = torch.ones(graph.n_nodes, dtype=torch.float64)
    non_error[graph.row_nodes] = 1 - a[:, errors].sum(1)
    # Nodes without rows count as fully explained, as in circuit-tracer (their rows are all-zero there).
    output_inf = node_inf + w
    completeness = float((non_error * output_inf).sum() / output_inf.sum().clamp(min=1e-30))
    return replacement, completeness
