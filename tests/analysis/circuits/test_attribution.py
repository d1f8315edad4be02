"""Completeness and bookkeeping of attribution with random dictionaries on tiny models of every family."""

from __future__ import annotations

import pytest
import torch

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.replacement import record, replay
from scope_hub.analysis.circuits.transcoder_set import TranscoderSet
from scope_hub.errors import ConfigError
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import tiny_model
from tests.analysis.circuits.helpers import IDS, dictionaries

FP64_TOL, FP32_TOL = 1e-12, 1e-4  # relative to the largest row value (measured: ~1e-14 and ~1e-5)


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen3", "gpt2", "gpt_neox", "gemma2"])
@pytest.mark.parametrize("kind,arch", [("transcoder", "jumprelu"), ("skip_transcoder", "topk"), ("clt", "relu")])
def test_completeness_fp64(family, kind, arch):
    graph = attribute(
        IDS, tiny_model(family).double(), dictionaries(kind, arch), max_feature_nodes=None, max_n_logits=3
    )
    assert graph.n_features > 20 and graph.has_row[: graph.n_features].all()
    assert graph.relative_completeness_error() < FP64_TOL
    assert graph.completeness().abs().max() < 1e-10


def test_completeness_fp32_and_batch_size_does_not_matter():
    model = tiny_model("gemma3")
    ds = dictionaries("transcoder", "jumprelu", dtype=torch.float32)
    small = attribute(IDS, model, ds, max_feature_nodes=None, batch_size=3)
    big = attribute(IDS, model, ds, max_feature_nodes=None, batch_size=64)
    assert small.relative_completeness_error() < FP32_TOL
    assert small.info["n_backward"] > big.info["n_backward"]
    torch.testing.assert_close(small.rows, big.rows, rtol=1e-4, atol=1e-5)


def test_replay_reproduces_the_recorded_forward():
    model = tiny_model("llama").double()
    ts = TranscoderSet(model, dictionaries("skip_transcoder", "relu"))
    rec = record(model, ts, IDS, torch.ones(IDS.numel(), dtype=torch.bool))
    with replay(model, ts, rec, batch=4) as rp:
        for layer in range(ts.n_layers):
            torch.testing.assert_close(rp.block_in[layer][2], rec.block_in[layer], rtol=0, atol=1e-12)
        torch.testing.assert_close(rp.final[3], rec.final, rtol=0, atol=1e-12)


def test_bos_position_is_constant_by_default():
    model, ds = tiny_model("gemma3").double(), dictionaries("transcoder", "relu")
    graph = attribute(IDS, model, ds, max_feature_nodes=None)
    kept = attribute(IDS, model, ds, max_feature_nodes=None, zero_bos=False)
    assert (graph.features[:, 1] > 0).all() and (kept.features[:, 1] == 0).any()
    error_cols = [graph.error_node(L, 0) for L in range(graph.n_layers)]
    assert graph.rows[:, error_cols].abs().max() == 0
    for g in (graph, kept):  # either way the accounting closes
        assert g.relative_completeness_error() < FP64_TOL


def test_partial_rows_follow_influence_and_stay_complete():
    model, ds = tiny_model("gemma3").double(), dictionaries("transcoder", "jumprelu")
    full = attribute(IDS, model, ds, max_feature_nodes=None, max_n_logits=2)
    part = attribute(IDS, model, ds, max_feature_nodes=20, max_n_logits=2, batch_size=5, update_interval=1)
    feature_rows = part.row_nodes[part.row_nodes < part.n_features]
    assert feature_rows.numel() == 20 and part.n_features == full.n_features
    assert part.relative_completeness_error() < FP64_TOL
    # Rows are the same numbers whichever features were explored.
    for node in feature_rows.tolist():
        torch.testing.assert_close(part.rows[part.row_of(node)], full.rows[full.row_of(node)])
    # The explored features are the most influential ones (circuit-tracer's greedy order).
    from scope_hub.analysis.circuits.pruning import node_influence

    influence = node_influence(full)[: full.n_features]
    top = set(influence.argsort(descending=True)[:10].tolist())
    assert len(top & set(feature_rows.tolist())) >= 8


def test_layers_without_a_dictionary_become_error_nodes():
    model = tiny_model("gemma3").double()
    ds = dictionaries("transcoder", "relu")[1:2]  # layer 1 only
    graph = attribute(IDS, model, ds, max_feature_nodes=None)
    assert set(graph.features[:, 0].tolist()) == {1}
    assert graph.relative_completeness_error() < FP64_TOL
    assert graph.rows[:, graph.error_node(0, 5)].abs().max() > 0


def test_scoped_model_and_targets_and_saving(tmp_path):
    model = tiny_model("gemma3").double()
    ds = dictionaries("transcoder", "jumprelu")
    sm = ScopedModel.from_pretrained(model, dictionaries={f"tc{L}": d for L, d in enumerate(ds)})
    graph = attribute(IDS, sm, targets=[65, 66], max_feature_nodes=None)
    assert graph.logit_ids.tolist() == [65, 66] and graph.dictionaries == ["tc0", "tc1", "tc2"]
    assert graph.relative_completeness_error() < FP64_TOL
    again = Graph.load(graph.save(tmp_path / "g.pt"))
    assert torch.equal(again.rows, graph.rows) and again.tokens == graph.tokens and again.info == graph.info


def test_bad_inputs_raise_typed_errors():
    model = tiny_model("gemma3").double()
    sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=8, site="resid_post", layer=0), dtype=torch.float64)
    with pytest.raises(ConfigError, match="cannot replace an MLP block"):
        attribute(IDS, model, [sae])
    ds = dictionaries("transcoder", "relu")
    with pytest.raises(ConfigError, match="one per layer"):
        attribute(IDS, model, {"a": ds[0], "b": ds[1], "again": dictionaries("transcoder", "relu", seed=5)[0]})
    with pytest.raises(ConfigError, match="CLT"):
        two_layer_clt = make_dictionary(
            make_config("clt", "relu", d_in=64, d_out=64, d_sae=8, n_layers=2, site="mlp_in", site_out="mlp_out"),
            dtype=torch.float64,
        )
        attribute(IDS, model, {"clt": two_layer_clt, "tc": ds[2]})
    with pytest.raises(ConfigError, match="tokenizer"):
        attribute("hello", model, ds)
    with pytest.raises(ConfigError, match="transcoders="):
        attribute(IDS, model)
    wrong_site = make_dictionary(
        make_config("transcoder", "relu", d_in=64, d_out=64, d_sae=8, site="mlp_in", site_out="resid_post", layer=0),
        dtype=torch.float64,
    )
    with pytest.raises(ConfigError, match="not an MLP block output"):
        attribute(IDS, model, [wrong_site])
