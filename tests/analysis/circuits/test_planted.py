"""A known circuit planted in a tiny model is what the graph finds, with completeness to fp64 precision."""

from __future__ import annotations

import json

import pytest
import torch

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.export import graph_json
from scope_hub.analysis.circuits.interventions import check_interventions, predict, total_effects
from scope_hub.analysis.circuits.pruning import prune
from tests.analysis.circuits.planted import POS, PROMPT, planted_clt, planted_transcoders

FP64_TOL = 1e-12  # relative to the largest row value; measured ~1e-15


@pytest.fixture(scope="module")
def planted():
    p = planted_transcoders()
    return p, attribute(PROMPT, p.model, p.dictionaries, max_feature_nodes=None, max_n_logits=3)


@pytest.fixture(scope="module")
def planted_cross_layer():
    p = planted_clt()
    return p, attribute(PROMPT, p.model, p.dictionaries, max_feature_nodes=None, max_n_logits=3)


def _top_source(graph, node):
    sources, weights = graph.incoming(node)
    return int(sources[0]), float(weights[0])


def test_the_planted_circuit_is_the_top_path(planted):
    p, graph = planted
    a, b = graph.feature_node(*p.feature_a), graph.feature_node(*p.feature_b)
    assert int(graph.logit_ids[0]) == p.token_z, "Z must be the model's top prediction"
    z = graph.logit_node(0)
    assert _top_source(graph, z)[0] == b
    assert _top_source(graph, b)[0] == a
    assert _top_source(graph, a)[0] == graph.token_node(POS)
    assert _top_source(graph, b)[1] > 0 and _top_source(graph, z)[1] > 0
    # A and B fire only at the planted position.
    fired = {tuple(f) for f in graph.features.tolist()}
    assert {(0, q, 3) for q in range(POS)} & fired == set() and {(2, q, 5) for q in range(POS)} & fired == set()


def test_completeness_to_fp64_precision_and_exact_errors(planted):
    _, graph = planted
    assert graph.has_row[: graph.n_features].all(), "every feature's row was computed"
    assert graph.relative_completeness_error() < FP64_TOL
    # The MLPs *are* the transcoders, so every error node is (numerically) zero.
    assert graph.rows[:, graph.error_offset : graph.token_offset].abs().max() < 1e-12


def test_pruning_keeps_the_circuit(planted):
    p, graph = planted
    result = prune(graph, node_threshold=0.8, edge_threshold=0.98)
    for node in (graph.feature_node(*p.feature_a), graph.feature_node(*p.feature_b), graph.logit_node(0)):
        assert result.node_mask[node]
    data = graph_json(graph, result)
    links = {(link["source"], link["target"]) for link in data["links"]}
    assert ("0_3_4", "2_5_4") in links, "A -> B"
    assert ("2_5_4", f"4_{p.token_z}_4") in links, "B -> logit Z"
    json.dumps(data)  # plain JSON


def test_ablating_a_matches_the_graph_in_sign_and_size(planted):
    p, graph = planted
    a = graph.feature_node(*p.feature_a)
    result = check_interventions(graph, p.model, p.dictionaries, [a], scale=0.0)
    actual, total = float(result.actual[0]), float(result.predicted_total[0])
    assert actual < -1.0 and total < -1.0, result.table()
    assert 0.5 < actual / total < 2.0, result.table()
    # The direct edge alone has the wrong sign here: the effect runs through B.
    assert float(result.predicted_direct[0]) > 0


def test_clt_cross_layer_decoder_is_the_top_edge(planted_cross_layer):
    p, graph = planted_cross_layer
    a = graph.feature_node(*p.feature_a)
    assert int(graph.logit_ids[0]) == p.token_z
    assert _top_source(graph, graph.logit_node(0))[0] == a
    assert graph.relative_completeness_error() < FP64_TOL
    result = check_interventions(graph, p.model, p.dictionaries, [a], scale=0.0)
    assert 0.8 < float(result.actual[0]) / float(result.predicted_total[0]) < 1.25, result.table()


@pytest.mark.parametrize("which", ["planted", "planted_cross_layer"])
def test_graph_predictions_are_exact_in_the_local_replacement_model(which, request):
    # Frozen attention and norms leave only feature nonlinearities: a small steer that crosses no
    # threshold is linear, so the graph's propagated prediction must match to fp64 precision.
    p, graph = request.getfixturevalue(which)
    for node in (graph.feature_node(*p.feature_a), 0, graph.n_features // 2):
        result = check_interventions(graph, p.model, p.dictionaries, [node], scale=1.001, mode="frozen")
        torch.testing.assert_close(result.actual, result.predicted_total, rtol=1e-6, atol=1e-10)


def test_real_model_steering_differs_from_frozen_only_through_attention_and_norms(planted_cross_layer):
    p, graph = planted_cross_layer
    a = graph.feature_node(*p.feature_a)
    real = check_interventions(graph, p.model, p.dictionaries, [a], scale=1.01, mode="replacement")
    assert (real.actual.sign() == real.predicted_total.sign()).all(), real.table()


def test_total_effects_is_the_adjoint_of_predict(planted, planted_cross_layer):
    for p, graph in (planted, planted_cross_layer):
        effects = total_effects(graph)
        for node in (graph.feature_node(*p.feature_a), 0, 1, graph.n_features - 1):
            _, total = predict(graph, [node], 0.0)
            torch.testing.assert_close(-effects[node], total[0])


@pytest.mark.parametrize("make", [planted_transcoders, planted_clt])
def test_error_nodes_are_zero_at_every_position_including_bos(make):
    p = make()
    graph = attribute(PROMPT, p.model, p.dictionaries, max_feature_nodes=None, max_n_logits=2, zero_bos=False)
    assert (graph.features[:, 1] == 0).any(), "BOS features are nodes now"
    assert graph.rows[:, graph.error_offset : graph.token_offset].abs().max() < 1e-12
    assert graph.relative_completeness_error() < FP64_TOL
