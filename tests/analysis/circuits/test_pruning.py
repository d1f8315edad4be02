"""Pruning on row storage equals circuit-tracer's dense formulas (re-derived here from its graph.py)."""

from __future__ import annotations

import pytest
import torch

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.pruning import (
    find_threshold,
    graph_scores,
    influence,
    node_influence,
    prune,
)
from scope_hub.errors import ConfigError
from scope_hub.testing.tiny_models import tiny_model
from tests.analysis.circuits.helpers import IDS, dictionaries


# --- dense reference: circuit-tracer 0.5.0 graph.py, written out on an N x N matrix ---------------
def _normalize(m):
    a = m.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def _influence(a, w):
    current = w @ a
    total = current.clone()
    while current.any():
        current = current @ a
        total += current
    return total


def _threshold(scores, keep):
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum()
    return ordered[min(int(torch.searchsorted(cumulative, keep)), len(cumulative) - 1)]


def reference_prune(adj, n_features, n_tokens, n_logits, probs, node_threshold, edge_threshold):
    w = torch.zeros(adj.shape[0], dtype=adj.dtype)
    w[-n_logits:] = probs
    node_inf = _influence(_normalize(adj), w)
    node_mask = node_inf >= _threshold(node_inf, node_threshold)
    node_mask[-n_logits - n_tokens :] = True
    pruned = adj.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    a = _normalize(pruned)
    scores = a * (_influence(a, w) + w)[:, None]
    edge_mask = scores >= _threshold(scores.flatten(), edge_threshold)
    old = node_mask.clone()
    node_mask[: -n_logits - n_tokens] &= edge_mask[:, : -n_logits - n_tokens].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -n_logits - n_tokens] &= edge_mask[:, : -n_logits - n_tokens].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    return node_inf, node_mask, edge_mask


@pytest.fixture(scope="module")
def graph():
    return attribute(
        IDS,
        tiny_model("gemma3").double(),
        dictionaries("transcoder", "jumprelu"),
        max_feature_nodes=None,
        max_n_logits=4,
    )


def _dense(graph):
    dense = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=torch.float64)
    dense[graph.row_nodes] = graph.rows.double()
    return dense


@pytest.mark.parametrize("node_threshold,edge_threshold", [(0.8, 0.98), (0.5, 0.9), (0.95, 0.995)])
def test_prune_matches_the_dense_reference(graph, node_threshold, edge_threshold):
    ref_inf, ref_nodes, ref_edges = reference_prune(
        _dense(graph),
        graph.n_features,
        graph.n_pos,
        graph.n_logits,
        graph.logit_probs.double(),
        node_threshold,
        edge_threshold,
    )
    result = prune(graph, node_threshold, edge_threshold)
    torch.testing.assert_close(result.influence, ref_inf)
    assert torch.equal(result.node_mask, ref_nodes)
    assert torch.equal(result.edge_mask, ref_edges[graph.row_nodes])
    assert result.node_mask[graph.token_offset :].all(), "tokens and logits always stay"
    assert 0 < result.n_edges() < (graph.rows != 0).sum()


def test_more_lenient_thresholds_keep_more_influence(graph):
    kept = [prune(graph, nt, et).kept_influence(graph) for nt, et in ((0.5, 0.9), (0.8, 0.98), (0.95, 0.999))]
    assert kept == sorted(kept) and kept[-1] > 0.9


def test_influence_is_the_path_sum_and_scores_are_fractions(graph):
    w = torch.zeros(graph.n_nodes, dtype=torch.float64)
    w[graph.logit_offset :] = graph.logit_probs.double()
    a = _normalize(_dense(graph))
    series, power = torch.zeros_like(w), w.clone()
    for _ in range(graph.n_layers + 3):
        power = power @ a
        series += power
    torch.testing.assert_close(node_influence(graph), series)
    replacement, completeness = graph_scores(graph)
    assert 0 < replacement < 1 and 0 < completeness < 1


def test_find_threshold_and_argument_checks(graph):
    scores = torch.tensor([5.0, 3.0, 1.0, 1.0])
    assert (
        find_threshold(scores, 0.5) == 5.0 and find_threshold(scores, 0.8) == 3.0 and find_threshold(scores, 1.0) == 1.0
    )
    with pytest.raises(ConfigError, match="node_threshold"):
        prune(graph, node_threshold=1.5)
    cyclic = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(RuntimeError, match="cycle"):
        influence(torch.tensor([0, 1]), cyclic, torch.tensor([1.0, 0.0]), max_iter=50)
