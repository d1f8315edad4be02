"""Attribution on the real Gemma 3 270M with quick transcoders at all 18 layers (integration).

The transcoders are fitted inside the session (see scope_hub/analysis/circuits/quick.py: ~30 s on 2 cores) and
saved as native folders under the session's tmp root, shared by xdist workers through a file
lock (fitted once per session), so attribution also exercises loading.
"""

from __future__ import annotations

import json

import pytest
import torch
from filelock import FileLock

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.analysis.circuits.interventions import check_interventions, total_effects
from scope_hub.analysis.circuits.pruning import prune
from scope_hub.analysis.circuits.quick import fit_transcoder, harvest, transcoder_fvu

pytestmark = pytest.mark.integration

PROMPT = "The capital of the country whose largest city is Berlin is"
FEATURE_ROWS = 768


@pytest.fixture(scope="module")
def quick_folders(gemma3_270m, tmp_path_factory):
    root = tmp_path_factory.getbasetemp().parent / "circuits-quick-transcoders"  # shared by xdist workers
    root.mkdir(exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not (root / "fvu.json").is_file():
            fvus = []
            for layer, (x, y) in harvest(gemma3_270m.model, gemma3_270m.tokenizer).items():
                tc = fit_transcoder(x, y, layer, d_sae=256, l0=12, model_id="google/gemma-3-270m")
                fvus.append(transcoder_fvu(tc, x, y))
                tc.save_pretrained(root / f"layer_{layer}")
            (root / "fvu.json").write_text(json.dumps(fvus))
    fvus = json.loads((root / "fvu.json").read_text())
    assert max(fvus) < 0.6, f"quick transcoders should explain most MLP variance; FVU per layer {fvus}"
    return [str(root / f"layer_{layer}") for layer in range(len(fvus))]


@pytest.fixture(scope="module")
def graph(gemma3_270m, quick_folders):
    return attribute(
        PROMPT, gemma3_270m.model, quick_folders, tokenizer=gemma3_270m.tokenizer, max_feature_nodes=FEATURE_ROWS
    )


def test_completeness_on_the_real_model(graph):
    assert graph.n_layers == 18 and graph.n_features > FEATURE_ROWS
    assert len(graph.row_nodes) == FEATURE_ROWS + graph.n_logits
    assert graph.logit_labels[0].strip() == "the" or graph.logit_probs[0] > 0.1
    # fp32 on residual norms in the hundreds: measured ~6e-7 relative, ~2e-5 absolute.
    assert graph.relative_completeness_error() < 1e-4, graph.completeness().abs().max()


def test_pruning_keeps_most_influence(graph):
    # kept_influence counts feature and error nodes only (token nodes always stay), and unexplored
    # features (no rows) are pruned: measured 0.85 at (0.95, 0.99), 0.81 at (0.9, 0.99), 0.71 at default.
    lenient = prune(graph, node_threshold=0.95, edge_threshold=0.99)
    default = prune(graph)
    assert lenient.kept_influence(graph) >= 0.8
    assert default.kept_influence(graph) >= 0.6
    assert 0 < default.n_edges() < lenient.n_edges() < (graph.rows != 0).sum()


def test_graph_is_exact_in_the_frozen_replacement_model(gemma3_270m, quick_folders, graph):
    top = _top_by_total_effect(graph, 3)
    for node in top:
        r = check_interventions(graph, gemma3_270m.model, quick_folders, [node], scale=1.01, mode="frozen")
        torch.testing.assert_close(r.actual[0], r.predicted_total[0], rtol=0.05, atol=2e-3)


def test_ablations_in_the_real_model_agree_in_sign_and_magnitude(gemma3_270m, quick_folders, graph):
    # Measured on the top 10 (docs/circuits.md): 8 agree in sign, 9 within 10x. The top 5 alone
    # left no margin (4 of 5), and a single near-threshold downstream feature can flip one node.
    top = _top_by_total_effect(graph, 10)
    results = [check_interventions(graph, gemma3_270m.model, quick_folders, [n], scale=0.0) for n in top]
    actual = torch.stack([r.actual[0] for r in results])
    predicted = torch.stack([r.predicted_total[0] for r in results])
    report = "\n".join(
        f"{graph.node_label(n)}: actual {a:+.3f} predicted {p:+.3f}"
        for n, a, p in zip(top, actual.tolist(), predicted.tolist())
    )
    same_sign = (actual.sign() == predicted.sign()).sum()
    within_10x = ((actual / predicted).abs().log10().abs() < 1).sum()
    assert same_sign >= 7 and within_10x >= 7, report


def _top_by_total_effect(graph, k: int) -> list[int]:
    effects = total_effects(graph)[: graph.n_features].abs()
    effects[~graph.has_row[: graph.n_features]] = 0  # explored features only
    return effects.argsort(descending=True)[:k].tolist()
