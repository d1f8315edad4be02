"""What ``scope-hub trace`` and ``attribute`` tell a researcher: covered layers, layer-ordered names,
prompt length, and low-probability targets (a missing leading space)."""

from __future__ import annotations

import json

import pytest
import torch

import scope_hub.analysis.circuits.cli as trace_cli
from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.export import graph_json
from scope_hub.analysis.circuits.pruning import prune
from scope_hub.cli import main
from scope_hub.errors import ConfigError
from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer
from tests.analysis.circuits.helpers import IDS, dictionaries, trace_command


def test_names_and_transcoder_list_are_in_layer_order():
    tcs = dictionaries("transcoder", "relu", dtype=torch.float32)
    given = {"tc_c": tcs[2], "tc_a": tcs[0], "tc_b": tcs[1]}  # not in layer order
    graph = attribute(IDS, tiny_model("gemma3"), given, max_feature_nodes=4, max_n_logits=1)
    assert graph.dictionaries == ["tc_a", "tc_b", "tc_c"]
    assert graph.info["dictionary_layers"] == [0, 1, 2]
    assert graph_json(graph, prune(graph))["metadata"]["transcoder_list"] == ["tc_a", "tc_b", "tc_c"]


def test_a_prompt_longer_than_the_model_supports_is_refused_saying_the_limit():
    model = tiny_model("gemma3")  # max_position_embeddings 128
    long = torch.cat([IDS, torch.full((129 - IDS.numel(),), 97)])
    with pytest.raises(ConfigError, match=r"129 tokens .* at most 128 .*shorten the prompt"):
        attribute(long, model, dictionaries("transcoder", "relu", dtype=torch.float32), max_feature_nodes=1)


def test_configs_without_the_field_are_not_checked_and_multimodal_ones_use_their_text_config():
    from types import SimpleNamespace

    from scope_hub.analysis.circuits.attribution import check_prompt_length, max_positions

    bare = torch.nn.Linear(2, 2)
    bare.config = SimpleNamespace(hidden_size=2)  # no max_position_embeddings / n_positions
    assert max_positions(bare) is None
    check_prompt_length(torch.zeros(10_000, dtype=torch.long), bare)  # nothing to check against: no error
    wrapped = torch.nn.Linear(2, 2)
    wrapped.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(max_position_embeddings=32))
    assert max_positions(wrapped) == 32 and max_positions(tiny_model("gpt2")) == tiny_model("gpt2").config.n_positions
    with pytest.raises(ConfigError, match="at most 32"):
        check_prompt_length(torch.zeros(33, dtype=torch.long), wrapped)


def test_the_summary_names_layers_without_a_dictionary(model_folder, tmp_path, capsys):
    tcs = dictionaries("transcoder", "relu", dtype=torch.float32)
    for L in (0, 2):
        tcs[L].save_pretrained(tmp_path / "set" / f"layer_{L}")
    code = main(
        trace_command(model_folder, tmp_path / "set", tmp_path / "g.json", "--quiet", "--max-feature-nodes", "4")
    )
    assert code == 0, capsys.readouterr().err
    assert "dictionaries: layers 0,2; no dictionary (error node only): 1\n" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "g.json").read_text())["metadata"]
    assert [name.rsplit("/", 1)[-1] for name in metadata["transcoder_list"]] == ["layer_0", "layer_2"]


def test_layer_ranges_and_a_full_set():
    assert trace_cli.layer_ranges([6, 0, 1, 2, 3, 4, 17, 7]) == "0-4,6-7,17"
    graph = attribute(
        IDS,
        tiny_model("gemma3"),
        dictionaries("transcoder", "relu", dtype=torch.float32),
        max_feature_nodes=1,
        max_n_logits=1,
    )
    assert trace_cli.dictionary_summary(graph) == "dictionaries: layers 0-2 (every layer)"


class _SpacedTokenizer:
    """Stands in for a word-piece tokenizer: ``' ' + label`` is one token (``likely``)."""

    def __init__(self, likely: int) -> None:
        self.likely = likely

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.likely] if text.startswith(" ") else [0, 1]


def test_a_low_probability_target_warns_and_names_the_spaced_variant():
    model, tok = tiny_model("gemma3"), tiny_tokenizer()
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=IDS[None]).logits[0, -1].double(), dim=-1)
    rare, likely = int(probs.argmin()), int(probs.argmax())
    graph = attribute(
        IDS,
        model,
        dictionaries("transcoder", "relu", dtype=torch.float32),
        tokenizer=tok,
        targets=[rare, likely],
        max_feature_nodes=1,
    )
    p_rare = float(probs[rare])
    (warning,) = trace_cli.target_warnings(graph, model, _SpacedTokenizer(likely), threshold=p_rare * 1.01)
    assert warning.startswith(f"target {graph.logit_labels[0]!r} has probability")
    assert f"did you mean {' ' + graph.logit_labels[0]!r} (p={float(probs[likely]):.3f})" in warning
    assert trace_cli.target_warnings(graph, model, tok, threshold=p_rare * 0.99) == []  # above the threshold: quiet
    # the byte-level tokenizer spells ' x' as two tokens: a warning, without a suggestion
    (plain,) = trace_cli.target_warnings(graph, model, tok, threshold=p_rare * 1.01)
    assert "did you mean" not in plain


def test_the_cli_prints_the_target_warning_on_stderr(model_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trace_cli, "LOW_TARGET_PROB", 1.0)  # every target counts as unlikely
    for L, tc in enumerate(dictionaries("transcoder", "relu", dtype=torch.float32)):
        tc.save_pretrained(tmp_path / "set" / f"layer_{L}")
    options = ("--quiet", "--max-feature-nodes", "4", "--target", "l")
    code = main(trace_command(model_folder, tmp_path / "set", tmp_path / "g.json", *options))
    assert code == 0
    assert "warning: target 'l' has probability" in capsys.readouterr().err
