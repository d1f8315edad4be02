"""The refusal pipeline recovers a direction planted in a tiny Llama, and its interventions work."""

from __future__ import annotations

import pytest
import torch

from scope_hub.analysis.attribution import decoder_alignment, feature_attribution
from scope_hub.analysis.chat import render_chat
from scope_hub.analysis.direction import (
    ablate_direction,
    boundary_hookpoints,
    mean_difference,
    residuals,
)
from scope_hub.analysis.refusal import analyze_refusal, refusal_scores
from scope_hub.analysis.scores import RefusalScore
from scope_hub.errors import ConfigError
from scope_hub.hooks import attached_hookpoints, capture
from scope_hub.scoped_model import ScopedModel
from tests.analysis.helpers import (
    COMPLY,
    HARMFUL,
    HARMLESS,
    REFUSE,
    planted_refusal,
    sae_with_feature,
)

FEATURE = 7
SCORE = RefusalScore(refusal=(REFUSE,), compliance=(COMPLY,), mode="first_token")


@pytest.fixture(scope="module")
def planted():
    p = planted_refusal()
    sm = ScopedModel.from_pretrained(p.model, dictionaries={"sae": sae_with_feature(p.direction, FEATURE, bias=-0.1)})
    yield p, sm
    p.close()


@pytest.fixture(scope="module")
def report(planted):
    p, sm = planted
    return analyze_refusal(
        sm,
        p.tokenizer,
        harmful=HARMFUL[:6],
        harmless=HARMLESS[:6],
        heldout_harmful=HARMFUL[6:],
        heldout_harmless=HARMLESS[6:],
        dictionary="sae",
        score=SCORE,
        generate_tokens=1,
        steer_alpha=20.0,
        markers=(REFUSE,),
    )


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def test_mean_difference_finds_the_planted_direction(report, planted):
    p, _ = planted
    # Planted at layer 1's MLP output: boundaries 0 and 1 are before it, 2 and 3 after.
    assert _cos(report.diff.directions[2], p.direction) > 0.99
    assert _cos(report.diff.directions[3], p.direction) > 0.99
    assert report.diff.norms[1] < 1.0 < p.alpha * 0.9 < report.diff.norms[2]
    assert report.layer == 2, "the layer after the plant is the causal one"


def test_features_aligned_and_carrying_the_direction(report, planted):
    _p, sm = planted
    assert decoder_alignment(sm.dictionaries["sae"], report.direction, top_k=1)[0][0] == FEATURE
    top = report.features[0]
    assert top.feature == FEATURE and top.cosine > 0.99, report.to_markdown()
    others = report.features[1:]
    assert top.attribution > 10 * max(abs(f.attribution) for f in others)
    assert top.ablation_delta < -5 and all(abs(f.ablation_delta) < 0.1 * abs(top.ablation_delta) for f in others)


def test_interventions_move_score_and_generated_refusals(report):
    by_name = {r.name: r for r in report.interventions}
    base = by_name["baseline"]
    gap = base.harmful_score - base.harmless_score
    assert gap > 20 and base.harmful_rate == 1.0 and base.harmless_rate == 0.0
    ablated = by_name["ablate direction"]
    assert abs(ablated.harmful_score - base.harmless_score) < 0.2 * gap and ablated.harmful_rate == 0.0
    added = by_name["add direction"]
    assert added.harmless_score > base.harmful_score - 0.2 * gap and added.harmless_rate == 1.0
    feats = next(r for name, r in by_name.items() if name.startswith("ablate features"))
    assert feats.harmful_score < base.harmful_score - 0.5 * gap and feats.harmful_rate == 0.0
    steered = next(r for name, r in by_name.items() if name.startswith("steer feature"))
    assert steered.harmless_rate == 1.0
    assert "## Held-out interventions" in report.to_markdown()


def test_ablated_direction_is_absent_from_every_residual_write(planted):
    p, _ = planted
    batch = render_chat(p.tokenizer, HARMFUL[:2])
    points = boundary_hookpoints(p.model)
    with ablate_direction(p.model, p.direction * 3), capture(p.model, points) as acts, torch.no_grad():
        p.model(**batch.model_inputs())
    for point in points:
        assert float((acts[str(point)] @ p.direction).abs().max()) < 1e-4, point
    assert attached_hookpoints(p.model) == ["model.layers.1.mlp.output"]  # only the plant is left


def test_attribution_ranks_the_carrier_first_per_position(planted):
    p, sm = planted
    batch = render_chat(p.tokenizer, HARMFUL[:3])
    result = feature_attribution(sm, "sae", batch, lambda m, b: SCORE(m, p.tokenizer, b))
    at_answer = result.attribution[:, -1]
    assert (at_answer.argmax(-1) == FEATURE).all()
    # Splicing with the error term leaves the forward unchanged.
    with torch.no_grad():
        plain = refusal_scores(p.model, p.tokenizer, HARMFUL[:3], SCORE)
    torch.testing.assert_close(result.scores, plain, rtol=1e-4, atol=1e-4)


def test_mean_difference_and_errors(planted):
    p, _ = planted
    diff = mean_difference(p.model, p.tokenizer, HARMFUL[:2], HARMLESS[:2], selector="last_user")
    assert diff.directions.shape == (4, 64)
    diff = mean_difference(p.model, p.tokenizer, HARMFUL[:4], HARMLESS[:4])
    separation = diff.separation(
        residuals(p.model, p.tokenizer, HARMFUL[4:]), residuals(p.model, p.tokenizer, HARMLESS[4:])
    )
    assert separation[2] == separation[3] == 1.0
    with pytest.raises(ConfigError):
        mean_difference(p.model, p.tokenizer, [], HARMLESS[:2])
    with pytest.raises(ConfigError):
        ablate_direction(p.model, torch.zeros(64)).__enter__()
    with pytest.raises(ConfigError, match="^harmful, heldout_harmless: no prompts"):
        analyze_refusal(p.model, p.tokenizer, harmful=[], heldout_harmless=[], score=SCORE, layers=[3])
    with pytest.raises(ConfigError, match="resid_pre"):
        analyze_refusal(
            p.model,
            p.tokenizer,
            harmful=HARMFUL[:2],
            harmless=HARMLESS[:2],
            heldout_harmful=HARMFUL[2:3],
            heldout_harmless=HARMLESS[2:3],
            score=SCORE,
            layers=[3],
        )


def test_cli_refusal_command(tmp_path, capsys):
    from scope_hub.cli import main, register_command
    from scope_hub.testing.tiny_models import tiny_llama
    from tests.analysis.helpers import chat_tokenizer, sae_with_feature, unit

    register_command("refusal", "refusal analysis", "scope_hub.analysis.cli:setup_refusal")
    tiny_llama().save_pretrained(tmp_path / "model")
    chat_tokenizer().save_pretrained(tmp_path / "model")  # the chat template travels with the tokenizer
    sae_with_feature(unit(3), 1).save_pretrained(tmp_path / "sae")
    files = []
    # Sets are averaged separately, so unequal sizes (3 harmful vs 2 harmless) are fine.
    for name, prompts in [
        ("harmful", HARMFUL[:3]),
        ("harmless", HARMLESS[:2]),
        ("heldout-harmful", HARMFUL[3:5]),
        ("heldout-harmless", HARMLESS[3:5]),
    ]:
        (tmp_path / f"{name}.txt").write_text("\n".join(prompts))
        files += [f"--{name}", str(tmp_path / f"{name}.txt")]
    report = tmp_path / "report.md"
    args = [
        "refusal",
        "--model",
        str(tmp_path / "model"),
        "--dictionary",
        str(tmp_path / "sae"),
        "--layers",
        "1,2",
        "--top-k",
        "2",
        "--out",
        str(report),
        *files,
    ]
    assert main(args) == 0
    text = report.read_text()
    assert "## Refusal direction by layer" in text and "## Features" in text and "ablate direction" in text
    assert text.startswith(f"# Refusal report: {tmp_path / 'model'}")
    assert "Prompts: 3 harmful / 2 harmless (direction), 2 / 2 held out. Score: phrase" in text
    assert "Candidate layers: 1, 2." in text
    rows = [line for line in text.splitlines() if line.startswith("| baseline")]
    assert rows and rows[0].count("n/a (run with --generate N)") == 2, "rate cells must say how to get rates"
    capsys.readouterr()
    assert (
        main(["refusal", "--model", str(tmp_path / "model"), "--layers", "9", *files]) == 2
    )  # out of range: a config error
    assert "layers must lie in 0..2" in capsys.readouterr().err


def _no_model(spec):
    raise AssertionError("the model was loaded before the inputs were checked")


def test_cli_refusal_checks_inputs_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import scope_hub.analysis.cli as cli
    from scope_hub.cli import main, register_command

    register_command("refusal", "refusal analysis", "scope_hub.analysis.cli:setup_refusal")
    monkeypatch.setattr(cli, "load_model_and_tokenizer", _no_model)
    empty, empty_json = tmp_path / "empty.txt", tmp_path / "empty.json"
    empty.write_text("# only a comment\n")
    empty_json.write_text("[]")
    registry = f"file://{tmp_path / 'registry'}"
    cases = [
        (["--heldout-harmless", str(empty)], "--heldout-harmless"),
        (["--harmful", str(empty_json)], "no prompts"),
        (["--harmless", str(tmp_path / "missing.txt")], "no such prompt file"),
        (["--dictionary", str(tmp_path / "x" / "nosuch")], "no such folder"),
        (["--dictionary", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae"], "is not published"),
        (["--layers", "1,two"], "comma-separated integers"),
    ]
    for extra, message in cases:
        assert main(["refusal", "--registry", registry, "--model", "m", *extra]) in (1, 2), extra
        err = capsys.readouterr().err
        assert message in err and "was loaded" not in err, (extra, err)
