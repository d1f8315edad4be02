"""The round-trip matrix: every format x every (kind, activation) it can hold.

``folded`` names tensors a format stores in another parametrisation (``(x - b_dec) @ W + b``):
they round-trip to float rounding, every other tensor bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scope_hub.testing.dictionaries import make_config, make_dictionary


@dataclass(frozen=True)
class Case:
    fmt: str
    type: str
    arch: str
    extra: dict = field(default_factory=dict)
    folded: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        tail = "-".join(f"{k}" for k in self.extra)
        return f"{self.fmt}-{self.type}-{self.arch}" + (f"-{tail}" if tail else "")

    def make(self, seed: int = 0, dtype=torch.float32):
        return make_dictionary(make_config(self.type, self.arch, **self.extra), seed=seed, dtype=dtype).eval()


SQUARE = {"d_out": 6}  # formats whose transcoders map d_model -> d_model
GROUPS = {"matryoshka_groups": [4, 12]}
CASES = [
    *[
        Case("scope-hub", t, a)
        for t, a in [
            ("sae", "jumprelu"),
            ("sae", "topk"),
            ("transcoder", "batchtopk"),
            ("skip_transcoder", "relu"),
            ("clt", "jumprelu"),
            ("crosscoder", "topk"),
        ]
    ],
    *[Case("gemma-scope-2", t, "jumprelu") for t in ("sae", "transcoder", "skip_transcoder", "clt", "crosscoder")],
    Case("gemma-scope-2", "clt", "jumprelu", {"affine_skip": True}),
    Case("gemma-scope-1", "sae", "jumprelu"),
    Case("gemma-scope-1", "transcoder", "jumprelu"),
    *[Case("saelens", "sae", a) for a in ("jumprelu", "topk", "relu", "batchtopk")],
    *[Case("saelens", t, a) for t in ("transcoder", "skip_transcoder") for a in ("jumprelu", "relu")],
    Case("saelens", "sae", "jumprelu", GROUPS),
    Case("sparsify", "sae", "topk", folded=("b_enc",)),
    Case("sparsify", "transcoder", "topk", SQUARE),
    Case("sparsify", "skip_transcoder", "topk", SQUARE),
    Case("dictionary-learning", "sae", "relu"),
    Case("dictionary-learning", "sae", "jumprelu"),
    Case("dictionary-learning", "sae", "topk", folded=("b_enc",)),
    Case("dictionary-learning", "sae", "batchtopk"),  # per-latent thresholds: JumpReluAutoEncoder, exact
    Case("circuit-tracer", "transcoder", "jumprelu", SQUARE),
    Case("circuit-tracer", "transcoder", "relu", SQUARE),
    Case("circuit-tracer", "skip_transcoder", "jumprelu", SQUARE),
    Case("circuit-tracer", "clt", "jumprelu", SQUARE),
    Case("circuit-tracer", "clt", "relu", SQUARE),
]

UNSUPPORTED = [  # (format, type, arch, extra, words in the error)
    ("gemma-scope-2", "sae", "topk", {}, "cannot hold a topk sae"),
    ("gemma-scope-1", "clt", "jumprelu", {}, "cannot hold a jumprelu clt"),
    ("saelens", "clt", "jumprelu", {}, "cannot hold a jumprelu clt"),
    ("saelens", "transcoder", "topk", {}, "cannot hold a topk transcoder"),
    ("sparsify", "sae", "jumprelu", {}, "cannot hold a jumprelu sae"),
    ("sparsify", "transcoder", "topk", {"d_out": 8}, "needs d_out == d_in"),
    ("dictionary-learning", "transcoder", "relu", {}, "cannot hold a relu transcoder"),
    ("circuit-tracer", "sae", "jumprelu", {}, "cannot hold a jumprelu sae"),
    ("circuit-tracer", "transcoder", "topk", {"d_out": 6}, "cannot hold a topk transcoder"),
    ("circuit-tracer", "clt", "relu", {"d_out": 8}, "needs d_out == d_in"),
]


def inputs(module, n: int = 9, seed: int = 1) -> torch.Tensor:
    """Random inputs of the right shape (layers stacked on axis -2 for CLTs and crosscoders)."""
    gen = torch.Generator().manual_seed(seed)
    c = module.config
    shape = (n, c.n_layers, c.d_in) if c.type in ("clt", "crosscoder") else (n, c.d_in)
    return torch.randn(shape, generator=gen) * 2
