"""The graph JSON has circuit-tracer's viewer schema; the HTML view renders it in headless Chromium."""

from __future__ import annotations

import json
import re

import pytest
import torch

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.export import (
    METADATA_FILE,
    cantor,
    circuit_tracer_error_id,
    graph_json,
    node_record,
    scan_id,
    write_graph_json,
)
from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.html import render_html, write_html
from scope_hub.analysis.circuits.pruning import prune
from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer
from tests.analysis.circuits.helpers import dictionaries
from tests.analysis.helpers import CHROMIUM, dump_dom

# circuit-tracer 0.5.0 frontend/graph_models.py: fields of Node, Metadata, QParams, and the top-level Model.
NODE_FIELDS = {
    "node_id",
    "feature",
    "layer",
    "ctx_idx",
    "feature_type",
    "token_prob",
    "is_target_logit",
    "run_idx",
    "reverse_ctx_idx",
    "jsNodeId",
    "clerp",
    "influence",
    "activation",
}
METADATA_FIELDS = {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"}
QPARAMS_FIELDS = {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
FEATURE_TYPES = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}


@pytest.fixture(scope="module")
def graph():
    tok = tiny_tokenizer()
    ids = tok("The cat sat on", return_tensors="pt").input_ids[0]
    return attribute(
        ids,
        tiny_model("gemma3").double(),
        dictionaries("transcoder", "jumprelu"),
        tokenizer=tok,
        max_feature_nodes=None,
        max_n_logits=3,
    )


def test_json_schema_and_node_ids(graph):
    result = prune(graph, 0.8, 0.98)
    data = graph_json(graph, result, slug="cat")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert set(data["metadata"]) == METADATA_FIELDS and set(data["qParams"]) == QPARAMS_FIELDS
    assert data["metadata"]["prompt_tokens"] == graph.tokens and data["metadata"]["node_threshold"] == 0.8
    ids = {n["node_id"] for n in data["nodes"]}
    assert len(ids) == len(data["nodes"])
    for node in data["nodes"]:
        assert set(node) == NODE_FIELDS and node["feature_type"] in FEATURE_TYPES
        if node["feature_type"] == "cross layer transcoder":
            layer, index, pos = map(int, node["node_id"].split("_"))
            assert node["feature"] == cantor(layer, index) and node["ctx_idx"] == pos and node["layer"] == str(layer)
            assert graph.feature_node(layer, pos, index) is not None and node["activation"] > 0
        elif node["feature_type"] == "embedding":
            assert node["node_id"] == f"E_{int(graph.input_ids[node['ctx_idx']])}_{node['ctx_idx']}"
        elif node["feature_type"] == "logit":
            assert node["layer"] == str(graph.n_layers + 1) and node["ctx_idx"] == graph.n_pos - 1
            assert re.fullmatch(r'Output ".*" \(p=\d\.\d{3}\)', node["clerp"])
        else:
            assert re.fullmatch(r"\d+_-1_\d+", node["node_id"]) and node["feature"] == -1
    kinds = [n["feature_type"] for n in data["nodes"]]
    assert kinds.count("embedding") == graph.n_pos and kinds.count("logit") == graph.n_logits
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    for link in data["links"]:
        assert link["source"] in ids and link["target"] in ids and isinstance(link["weight"], float)
    assert len(data["links"]) == result.n_edges() > 0


def test_node_ids_are_unique_where_circuit_tracers_collide():
    """Layer-0 feature #1 at position 2 and the layer-1 error at position 2: circuit-tracer names both 0_1_2."""
    n_layers, n_pos = 3, 4
    features = torch.tensor([[0, 2, 1], [0, 3, 2], [1, 2, 0], [2, 1, 3]])  # (layer, pos, index)
    n_nodes = len(features) + n_layers * n_pos + n_pos + 1
    g = Graph(
        prompt="abcd",
        input_ids=torch.tensor([5, 6, 7, 8]),
        tokens=list("abcd"),
        n_layers=n_layers,
        features=features,
        activations=torch.ones(len(features)),
        logit_ids=torch.tensor([9]),
        logit_probs=torch.tensor([1.0]),
        logit_labels=["x"],
        row_nodes=torch.tensor([n_nodes - 1]),
        rows=torch.zeros(1, n_nodes),
        values=torch.zeros(1),
        bias=torch.zeros(1),
    )
    records = [node_record(g, node, 0.0) for node in range(g.n_nodes)]
    for field in ("node_id", "jsNodeId"):
        ids = [r[field] for r in records]
        assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    errors = {(int(r["layer"]), r["ctx_idx"]): r["node_id"] for r in records if r["feature"] == -1}
    assert errors[(1, 2)] == "1_-1_2" and circuit_tracer_error_id(errors[(1, 2)]) == "0_1_2"
    assert any(r["node_id"] == "0_1_2" and r["feature_type"] == "cross layer transcoder" for r in records)


def test_links_carry_the_graph_weights(graph):
    data = graph_json(graph)
    by_id = {node_record(graph, node, 0.0)["node_id"]: node for node in range(graph.n_nodes)}
    for link in data["links"][:50]:
        row = graph.row_of(by_id[link["target"]])
        assert link["weight"] == pytest.approx(float(graph.rows[row, by_id[link["source"]]]))


def test_write_updates_the_viewer_index(graph, tmp_path):
    write_graph_json(graph, tmp_path / "one.json")
    write_graph_json(graph, tmp_path / "two.json")
    write_graph_json(graph, tmp_path / "one.json", node_threshold=0.5)
    index = json.loads((tmp_path / METADATA_FILE).read_text())
    assert [g["slug"] for g in index["graphs"]] == ["two", "one"]
    assert index["graphs"][1]["node_threshold"] == 0.5
    assert json.loads((tmp_path / "one.json").read_text())["metadata"]["slug"] == "one"


def test_scan_names():
    assert scan_id(["a/b"]) == ("a/b", [])
    scan, names = scan_id(["x", "y"])
    assert scan.startswith("custom-") and names == ["x", "y"] and scan == scan_id(["x", "y"])[0]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_every_node_and_link_in_headless_chromium(graph, tmp_path):
    result = prune(graph)
    data = graph_json(graph, result)
    page = write_html(graph, tmp_path / "graph.html", result)
    assert "<script src" not in page.read_text() and "<link" not in page.read_text()
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    status = re.search(r'id="status"[^>]*>', dom).group(0)
    assert 'data-rendered="true"' in status
    assert f'data-nodes="{len(data["nodes"])}"' in status and f'data-links="{len(data["links"])}"' in status
    drawn = set(re.findall(r'class="node [a-z]+" data-node-id="([^"]+)"', dom))
    assert drawn == {n["node_id"] for n in data["nodes"]}
    assert len(re.findall(r'<line[^>]*class="link"', dom)) == len(data["links"])
    for token in graph.tokens[1:]:
        assert f">{token}</text>" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_survives_hostile_prompt_text(tmp_path):
    data = {
        "metadata": {"prompt": "</script><b>x", "prompt_tokens": ["</script>", "<b>"], "scan": "s"},
        "nodes": [
            {
                "node_id": "E_1_0",
                "feature": 0,
                "layer": "E",
                "ctx_idx": 0,
                "feature_type": "embedding",
                "clerp": "</script>",
            }
        ],
        "links": [],
    }
    page = tmp_path / "hostile.html"
    page.write_text(render_html(data))
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    assert 'data-rendered="true"' in dom and "<b>x" not in dom.split("<body>")[1].split("<script")[0]
