"""The demo's --quick path end to end on the real Gemma 3 270M (integration; what `make demo` runs, smaller)."""

from __future__ import annotations

import re

import pytest

from scope_hub.registry import Registry
from trainers.demo import QUICK, demo_key, main

pytestmark = pytest.mark.integration

# Thresholds measured on the quick plan (24k harvested tokens, 120k training tokens, 1024 latents, k=32):
# the SAE reached FVU 0.126, ΔLM loss 0.94 nats and 5.5% dead latents, the transcoder FVU 0.219 and 2.3%
# dead (0.255 and 40.3% before its decoder started from the input/output covariance); the margins absorb
# seed- and thread-order noise.
SAE_MAX_FVU, SAE_MAX_DELTA_LM = 0.3, 3.0
TRANSCODER_MAX_FVU, TRANSCODER_MAX_DELTA_LM = 0.45, 1.0
SAE_MAX_DEAD = 0.10
"""Latents that never fire on the held-out tokens (centred init, aux-k, beta1 0.9, lr 1e-3)."""
TRANSCODER_MAX_DEAD = 0.10
"""The same bound as the SAE's: the transcoder's decoder starts at the output its encoder predicts."""


def _corpus_hash(out: str) -> str:
    return re.search(r"documents, sha256 ([0-9a-f]{16})", out).group(1)


def test_quick_demo_trains_publishes_and_reloads_and_reruns(tmp_path, capsys):
    registry = f"file://{tmp_path / 'registry'}"
    argv = ["--quick", "--work-dir", str(tmp_path / "work"), "--registry", registry]
    assert main(argv) == 0
    out = capsys.readouterr().out
    reg = Registry(registry)
    sae = reg.resolve(demo_key("sae", QUICK) + "@v1")
    metrics = sae.config["metrics"]
    assert metrics["fvu"] < SAE_MAX_FVU and metrics["delta_lm_loss"] < SAE_MAX_DELTA_LM, metrics
    assert abs(metrics["delta_lm_loss_error_term"]) < 1e-3, "splicing with the error term must be exact"
    assert metrics["l0"] == pytest.approx(32.0)
    assert metrics["dead_fraction"] < SAE_MAX_DEAD, metrics
    transcoder = reg.resolve(demo_key("transcoder", QUICK) + "@v1")
    tc = transcoder.config["metrics"]
    assert tc["fvu"] < TRANSCODER_MAX_FVU and tc["delta_lm_loss"] < TRANSCODER_MAX_DELTA_LM, tc
    assert tc["dead_fraction"] < TRANSCODER_MAX_DEAD, tc
    card = reg.info(demo_key("sae", QUICK)).card
    assert "license: apache-2.0" in card and f"{demo_key('sae', QUICK)}@v1" in card
    assert sae.config["provenance"]["dataset_sha256"], "the corpus hash must be recorded"
    assert "Top-activating contexts" in out and "steered 2x max" in out
    assert re.search(r"dead \d+\.\d%", out), "the demo prints the dead fraction next to FVU"

    # A second run in the same folder reads the same corpus, reuses the harvests and the finished
    # checkpoints, and publishes again: it never fails on its own leftovers.
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert _corpus_hash(again) == _corpus_hash(out)
