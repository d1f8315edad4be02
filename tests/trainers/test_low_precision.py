"""``train.dtype: bfloat16``: bf16 GEMMs, fp32 everything else, results as fp32's."""

from __future__ import annotations

import pytest
import torch

from scope_hub.testing.dictionaries import make_config, make_dictionary
from trainers.config import load_config
from trainers.forward import SparsitySpec, forward, layer_params
from trainers.kernels import JumpReLUDense
from trainers.losses import reconstruction_loss
from trainers.sources import SyntheticSource
from trainers.synthetic import PlantedDictionary
from trainers.trainer import Trainer


def _step_grads(dictionary, x, target, spec, low: bool):
    dictionary.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
        out = forward(layer_params(dictionary), x, spec, sparse=True)
    loss = reconstruction_loss(out.outputs, target) + sum(c.l0_tokens.mean() for c in out.codes)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in dictionary.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["sae", "clt"])
@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_sparse_threshold_path_under_bf16_equals_fp32(arch: str, kind: str) -> None:
    """The bf16 GEMM only selects (with a rounding margin); values and gradients are fp32's."""
    torch.manual_seed(0)
    n_layers = 3 if kind == "clt" else 1
    config = make_config(kind, arch, d_in=64, d_sae=256, n_layers=n_layers)
    dictionary = make_dictionary(config, seed=1)
    if arch == "jumprelu":
        with torch.no_grad():
            for name, p in dictionary.named_parameters():
                if name.endswith("threshold"):
                    p.uniform_(0.2, 1.0)  # thresholds where bf16's spacing exceeds the band
    x = torch.randn(512, n_layers, 64) * 3
    target = x if kind == "sae" else torch.randn(512, n_layers, config.d_out)
    spec = SparsitySpec(arch, bandwidth=0.05)
    ref_out, ref = _step_grads(dictionary, x, target, spec, low=False)
    low_out, low = _step_grads(dictionary, x, target, spec, low=True)
    assert low_out.codes[0].pre.dtype == torch.bfloat16 and low_out.outputs[0].dtype == torch.float32
    # fp32 rounding of differently ordered sums (outputs are O(100) here); a lost or flipped entry would be O(0.1) or more
    torch.testing.assert_close(low_out.outputs[0], ref_out.outputs[0], atol=1e-3, rtol=1e-4)
    for low_code, ref_code in zip(low_out.codes, ref_out.codes):
        torch.testing.assert_close(low_code.l0_tokens, ref_code.l0_tokens)
    assert ref.keys() == low.keys()
    for name in ref:
        assert ref[name].ne(0).any(), name
        torch.testing.assert_close(low[name], ref[name], atol=1e-4, rtol=1e-4, msg=name)


def test_dense_jumprelu_counts_are_exact_in_bf16() -> None:
    pre = torch.rand(3, 2000).to(torch.bfloat16)  # ~1000 active per row: bf16 cannot count that high exactly
    threshold = torch.full((2000,), 0.5)
    _f, l0 = JumpReLUDense.apply(pre, threshold, 0.01)
    assert l0.dtype == torch.float32
    assert l0.tolist() == (pre.float() > 0.5).sum(-1).float().tolist()


def _run(arch: str, decode: str, dtype: str) -> Trainer:
    sparsity = ["dictionary.k=4"] if arch == "topk" else ["dictionary.l0_target=4"]
    cfg = load_config(
        None,
        [
            "synthetic.d_in=64",
            "dictionary.d_sae=256",
            f"dictionary.architecture={arch}",
            *sparsity,
            "train.tokens=81920",
            "train.batch_size=512",
            "optim.lr=3e-3",
            "optim.warmup_steps=0",
            f"train.decode={decode}",
            f"train.dtype={dtype}",
            "train.log_every=160",
        ],
    )
    trainer = Trainer(cfg, SyntheticSource(PlantedDictionary.create(n_atoms=256, d_in=64, active_per_token=4)))
    trainer.run()
    return trainer


@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_bf16_topk_training_reaches_fp32_fvu(decode: str) -> None:
    """Same planted data, same tokens: FVU within 1% (relative) of the fp32 run; state stays fp32."""
    ref = _run("topk", decode, "float32").history[-1]["fvu"]
    trainer = _run("topk", decode, "bfloat16")
    low = trainer.history[-1]["fvu"]
    assert ref < 0.3  # learned something, so the comparison means something
    assert abs(low - ref) / ref < 0.01, (low, ref)
    assert all(p.dtype == torch.float32 for p in trainer.dictionary.parameters())
    states = [s for state in trainer.optimizer.state.values() for s in state.values() if torch.is_tensor(s)]
    assert states and all(s.dtype == torch.float32 for s in states if s.is_floating_point())


def test_bf16_is_part_of_the_fingerprint_and_fp32_keeps_the_old_one() -> None:
    base = load_config(None, ["synthetic.d_in=8"])
    assert load_config(None, ["synthetic.d_in=8", "train.dtype=float32"]).fingerprint() == base.fingerprint()
    assert load_config(None, ["synthetic.d_in=8", "train.dtype=bfloat16"]).fingerprint() != base.fingerprint()
