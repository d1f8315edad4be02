"""The demo's --quick path end to end on the real Gemma 3 270M (integration; what `make demo` runs, smaller)."""

from __future__ import annotations

import pytest

from scope_hub.registry import Registry
from trainers.demo import QUICK, demo_key, main

pytestmark = pytest.mark.integration

# Thresholds measured on the quick plan (24k harvested tokens, 120k training tokens, 1024 latents, k=32):
# the SAE reached FVU 0.153 and ΔLM loss 1.93 nats, the transcoder FVU 0.241 and ΔLM loss 0.17 nats;
# the margins absorb seed- and thread-order noise.
SAE_MAX_FVU, SAE_MAX_DELTA_LM = 0.3, 3.0
TRANSCODER_MAX_FVU, TRANSCODER_MAX_DELTA_LM = 0.45, 1.0


def test_quick_demo_trains_publishes_and_reloads(tmp_path, capsys):
    registry = f"file://{tmp_path / 'registry'}"
    assert main(["--quick", "--work-dir", str(tmp_path / "work"), "--registry", registry]) == 0
    out = capsys.readouterr().out
    reg = Registry(registry)
    sae = reg.resolve(demo_key("sae", QUICK) + "@v1")
    metrics = sae.config["metrics"]
    assert metrics["fvu"] < SAE_MAX_FVU and metrics["delta_lm_loss"] < SAE_MAX_DELTA_LM, metrics
    assert abs(metrics["delta_lm_loss_error_term"]) < 1e-3, "splicing with the error term must be exact"
    assert metrics["l0"] == pytest.approx(32.0)
    transcoder = reg.resolve(demo_key("transcoder", QUICK) + "@v1")
    tc = transcoder.config["metrics"]
    assert tc["fvu"] < TRANSCODER_MAX_FVU and tc["delta_lm_loss"] < TRANSCODER_MAX_DELTA_LM, tc
    card = reg.info(demo_key("sae", QUICK)).card
    assert "license: apache-2.0" in card and f"{demo_key('sae', QUICK)}@v1" in card
    assert sae.config["provenance"]["dataset_sha256"], "the corpus hash must be recorded"
    assert "Top-activating contexts" in out and "steered x2" in out
