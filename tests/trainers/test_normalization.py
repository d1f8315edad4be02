"""Normalisation: estimated to unit mean norm, recorded, and folded into the weights exactly."""

from __future__ import annotations

import pytest
import torch

from scope_hub.testing.dictionaries import make_config, make_dictionary
from tests.trainers.helpers import run_planted
from trainers.forward import SparsitySpec, forward, layer_params
from trainers.normalization import fold_normalization


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder", "clt"])
def test_folding_is_exact(kind: str) -> None:
    torch.manual_seed(0)
    extra = {"affine_skip": True} if kind == "clt" else {}
    cfg = make_config(kind, "jumprelu", d_in=6, d_sae=16, n_layers=3, **extra)
    dictionary = make_dictionary(cfg)
    n = cfg.n_layers
    s_in, s_out = [0.5, 2.0, 3.0][:n], [0.25, 4.0, 0.7][:n]
    if kind == "sae":
        s_out = s_in
    x = torch.randn(20, n, 6)
    spec = SparsitySpec("jumprelu")
    with torch.no_grad():
        normalised = forward(layer_params(dictionary), x * torch.tensor(s_in).view(1, -1, 1), spec, sparse=False)
        expected = normalised.outputs[-1] / torch.tensor(s_out).view(1, -1, 1)
        trained_decoders = [lp.w_dec.clone() for lp in layer_params(dictionary)]
        fold_normalization(dictionary, s_in, s_out)
        got = dictionary(x) if kind == "clt" else dictionary(x[:, 0]).unsqueeze(1)
    assert dictionary.config.normalization.kind == "none"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # features absorb the scale, so each layer's decoder into its own layer keeps its trained (unit) rows
    for trained, lp in zip(trained_decoders, layer_params(dictionary)):
        assert torch.equal(lp.w_dec.reshape(16, -1, cfg.d_out)[:, 0], trained.reshape(16, -1, cfg.d_out)[:, 0])


def test_unfolded_factors_are_recorded_and_used() -> None:
    run = run_planted("dictionary.architecture=relu", "train.tokens=4096", "output.fold_normalization=false")
    from trainers.publish import export_dictionary

    exported = export_dictionary(run.result, run.trainer.cfg, {})
    norm = exported.config.normalization
    assert norm.kind == "constant_scale" and norm.scale_in == pytest.approx(run.result.scale_in[0])
    x, _ = run.trainer.source.batch(0, 4096)
    assert float((x[:, 0] * norm.scale_in).norm(dim=-1).mean()) == pytest.approx(1.0, rel=0.05)
    folded = export_dictionary(
        run.result,
        run.trainer.cfg.model_copy(
            update={"output": run.trainer.cfg.output.model_copy(update={"fold_normalization": True})}
        ),
        {},
    )
    torch.testing.assert_close(folded(x[:, 0]), exported(x[:, 0]), atol=1e-5, rtol=1e-4)
