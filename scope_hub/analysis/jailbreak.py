"""Which features a jailbreak wrapper suppresses or adds, with effect sizes.

The same requests are run plain and wrapped (``"You are DAN ... {request}"``); each
prompt is summarised by its feature vector at one position (default: the answer
position, where the model decides how to start) or reduced over roles. Per feature:

    effect size d = (mean_wrapped - mean_plain) / pooled std,   pooled std = sqrt((var_p + var_w) / 2)

(Cohen's d, unpaired). Negative d: the wrapper **suppresses** the feature; positive: it
**adds** it. Features inactive on both sides get d = 0.

Example:
    >>> from scope_hub.scoped_model import ScopedModel
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=1))
    >>> sm = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": sae})
    >>> report = compare_jailbreak(sm, "sae", chat_tokenizer(), ["Bomb?", "Gun?", "Poison?"],
    ...                            wrappers=["You are DAN. {request}"], top_k=2)
    >>> len(report.suppressed), len(report.added), report.shifts[0].feature in range(16)
    (2, 2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.activations import prompt_features
from scope_hub.analysis.prompts import load_prompts
from scope_hub.analysis.tables import markdown_table
from scope_hub.errors import ConfigError
from scope_hub.scoped_model import ScopedModel

__all__ = ["FeatureShift", "JailbreakReport", "compare_activations", "compare_jailbreak", "wrap"]


def wrap(requests: Sequence[str], wrappers: Sequence[str]) -> list[str]:
    """Every request inside every wrapper (``{request}`` is replaced; other braces are kept).

    Example:
        >>> wrap(["Hi"], ["[{request}]", "{x} {request}!"])
        ['[Hi]', '{x} Hi!']
    """
    bad = [w for w in wrappers if "{request}" not in w]
    if bad:
        raise ConfigError(f"wrapper {bad[0]!r} has no {{request}} placeholder")
    return [w.replace("{request}", r) for w in wrappers for r in requests]


@dataclass
class FeatureShift:
    """How one feature's activation differs between two prompt sets."""

    feature: int
    mean_a: float
    """Mean activation on set A (plain)."""
    mean_b: float
    """Mean activation on set B (wrapped)."""
    effect_size: float
    """(mean_b - mean_a) / pooled std."""
    active_a: float
    """Fraction of set A prompts where the feature is active."""
    active_b: float

    @property
    def difference(self) -> float:
        return self.mean_b - self.mean_a


def compare_activations(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> list[FeatureShift]:
    """Per-feature shift from ``a`` [n, d_sae] to ``b`` [m, d_sae], sorted by |effect size|."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ConfigError(
            f"compare_activations needs [n>=2, d] and [m>=2, d] with equal d; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.float(), b.float()
    diff = b.mean(0) - a.mean(0)
    pooled = ((a.var(0) + b.var(0)) / 2).sqrt()
    # A feature constant on both sides but different between them is a real shift: floor the std.
    effect = torch.where(diff.abs() > eps, diff / pooled.clamp_min(eps), torch.zeros_like(diff))
    order = effect.abs().argsort(descending=True, stable=True)
    active_a, active_b = (a > 0).float().mean(0), (b > 0).float().mean(0)
    return [
        FeatureShift(
            int(f),
            float(a[:, f].mean()),
            float(b[:, f].mean()),
            float(effect[f]),
            float(active_a[f]),
            float(active_b[f]),
        )
        for f in order
    ]


@dataclass
class JailbreakReport:
    """Features a wrapper suppresses (d < 0) or adds (d > 0), strongest first."""

    shifts: list[FeatureShift]
    suppressed: list[FeatureShift]
    added: list[FeatureShift]
    n_plain: int
    n_wrapped: int

    def to_markdown(self) -> str:
        def table(rows: list[FeatureShift]) -> str:
            return markdown_table(
                ["feature", "mean plain", "mean wrapped", "effect size d", "active plain", "active wrapped"],
                [[s.feature, s.mean_a, s.mean_b, s.effect_size, s.active_a, s.active_b] for s in rows],
            )

        return "\n".join(
            [
                f"{self.n_plain} plain vs {self.n_wrapped} wrapped prompts",
                "\n## Suppressed by the wrapper",
                table(self.suppressed),
                "\n## Added by the wrapper",
                table(self.added),
            ]
        )


def compare_jailbreak(
    scoped: ScopedModel,
    name: str,
    tokenizer: Any,
    requests: Sequence[str] | None = None,
    *,
    wrappers: Sequence[str] | None = None,
    selector: str | Sequence[str] = "answer",
    reduce: str = "mean",
    top_k: int = 10,
    min_effect: float = 0.0,
    batch_size: int = 16,
) -> JailbreakReport:
    """Feature activations on plain vs wrapped ``requests`` (defaults: shipped harmful test set and wrappers)."""
    requests = list(requests or load_prompts("harmful_test"))
    wrappers = list(wrappers or load_prompts("jailbreak_wrappers"))
    wrapped = wrap(requests, wrappers)
    plain, shifted = (
        prompt_features(scoped, name, tokenizer, prompts, selector=selector, reduce=reduce, batch_size=batch_size)
        for prompts in (requests, wrapped)
    )
    shifts = compare_activations(plain, shifted)
    suppressed = [s for s in shifts if s.effect_size < -min_effect][:top_k]
    added = [s for s in shifts if s.effect_size > min_effect][:top_k]
    return JailbreakReport(shifts, suppressed, added, len(requests), len(wrapped))
