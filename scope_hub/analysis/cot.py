"""Chain-of-thought faithfulness, first step: does the answer depend on features of the reasoning?

The conversation is rendered with the reasoning as the start of the model's turn, followed
by an answer prefix (``"So the answer is"``); the metric is the logit of the answer's first
token at the last position (minus an alternative answer's, when given). Then:

1. **attribution**: activation x gradient of the metric for every (reasoning position,
   feature), with the dictionary spliced in with its error term (the forward is unchanged,
   gradients flow through the features);
2. **ablation**: the top-k (position, feature) pairs are zeroed *at their positions only*
   (error term kept) and the metric re-measured, against controls: k random active pairs at
   reasoning positions, and every feature at every reasoning position.

A large drop for the top pairs and a small one for random pairs means the answer is
computed from those reasoning features (the reasoning is causally used, as far as this
dictionary sees); no drop anywhere means the answer does not depend on the reasoning's
features at this layer (it may be computed elsewhere, or post hoc).

Example:
    >>> from scope_hub.scoped_model import ScopedModel
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=1))
    >>> sm = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": sae})
    >>> report = cot_faithfulness(sm, "sae", chat_tokenizer(), "What is 2+2?", "2+2 is 4.", " 4", top_k=3, ks=(1, 3))
    >>> len(report.top), [row.k for row in report.ablations]
    (3, [1, 3, 'all'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.attribution import ablate_at, feature_attribution
from scope_hub.analysis.chat import ChatBatch, render_chat
from scope_hub.analysis.scores import last_logits_only
from scope_hub.analysis.tables import markdown_table
from scope_hub.errors import ConfigError
from scope_hub.scoped_model import ScopedModel

__all__ = ["AblationRow", "CotReport", "ReasoningFeature", "cot_faithfulness", "reasoning_mask"]


@dataclass
class ReasoningFeature:
    """One (reasoning position, feature) pair and its attribution to the answer."""

    position: int
    token: str
    feature: int
    activation: float
    attribution: float


@dataclass
class AblationRow:
    """Metric change when ``k`` pairs are ablated (``k='all'``: every feature at every reasoning position)."""

    k: int | str
    top_delta: float
    """Change when the top-k pairs by attribution are ablated."""
    random_delta: float | None
    """Mean change over random draws of k active pairs (None for 'all')."""
    answer_kept: bool
    """Whether the answer token is still the argmax after ablating the top-k."""


@dataclass
class CotReport:
    """Attribution table of reasoning features and the ablation test."""

    metric: float
    answer_is_top: bool
    top: list[ReasoningFeature]
    ablations: list[AblationRow]

    def to_markdown(self) -> str:
        head = f"answer metric {self.metric:.3f} (answer is the argmax: {self.answer_is_top})"
        top = markdown_table(
            ["position", "token", "feature", "activation", "attribution"],
            [[r.position, repr(r.token), r.feature, r.activation, r.attribution] for r in self.top],
        )
        abl = markdown_table(
            ["ablated pairs", "Δ metric (top by attribution)", "Δ metric (random active)", "answer kept"],
            [[a.k, a.top_delta, a.random_delta, str(a.answer_kept)] for a in self.ablations],
        )
        return "\n".join([head, "\n## Reasoning features by attribution", top, "\n## Ablation test", abl])


def reasoning_mask(tokenizer: Any, question: str, reasoning: str, batch: ChatBatch) -> torch.Tensor:
    """[1, seq] bool: the model-turn positions that belong to ``reasoning`` (not the answer prefix).

    Counts the model tokens of the reasoning rendered alone; assumes the answer prefix does not
    merge with the reasoning's last token (start it with a space or newline).
    """
    alone = render_chat(tokenizer, [question], continuations=[reasoning])
    n_reasoning = int(alone.role_mask("model").sum())
    model_positions = batch.role_mask("model")
    return model_positions & (model_positions.cumsum(-1) <= n_reasoning)


def cot_faithfulness(
    scoped: ScopedModel,
    name: str,
    tokenizer: Any,
    question: str,
    reasoning: str,
    answer: str,
    *,
    answer_prefix: str = "\nSo the answer is",
    alternative: str | None = None,
    top_k: int = 10,
    ks: Sequence[int] = (1, 3, 10),
    n_random: int = 5,
    seed: int = 0,
) -> CotReport:
    """Attribute the answer to reasoning features and test the top ones by ablation."""
    batch = render_chat(tokenizer, [question], continuations=[reasoning + answer_prefix])
    target = _first_token(tokenizer, answer)
    other = _first_token(tokenizer, alternative) if alternative is not None else None
    if other == target:
        raise ConfigError(f"answer {answer!r} and alternative {alternative!r} start with the same token")

    def from_logits(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return last[:, target] - (last[:, other] if other is not None else 0.0)

    keep = last_logits_only(scoped)
    result = feature_attribution(
        scoped, name, batch, lambda model, b: from_logits(model(**b.model_inputs(), **keep).logits)
    )
    mask = reasoning_mask(tokenizer, question, reasoning, batch)[0]
    if not mask.any():
        raise ConfigError("the reasoning text produced no model-turn tokens")
    attr = result.attribution[0] * mask[:, None]
    flat = attr.flatten().argsort(descending=True)
    n_feat = attr.shape[1]
    top = [_row(tokenizer, batch, result, int(i) // n_feat, int(i) % n_feat) for i in flat[:top_k]]

    base = float(result.scores[0])
    active = ((result.activations[0] > 0) & mask[:, None]).nonzero().tolist()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        chosen = [(p, f) for p, f in (divmod(int(i), n_feat) for i in flat[:k])]
        top_delta, kept = _ablated(scoped, batch, name, result, chosen, from_logits, target)
        draws = [_draw(active, k, gen) for _ in range(n_random)] if len(active) >= k else []
        random_deltas = [_ablated(scoped, batch, name, result, d, from_logits, target)[0] - base for d in draws]
        rows.append(AblationRow(k, top_delta - base, sum(random_deltas) / len(random_deltas) if draws else None, kept))
    everything, kept = _ablated(scoped, batch, name, result, [tuple(pf) for pf in active], from_logits, target)
    rows.append(AblationRow("all", everything - base, None, kept))
    _, answer_is_top = _ablated(scoped, batch, name, result, [], from_logits, target)
    return CotReport(base, answer_is_top, top, rows)


def _first_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ConfigError(f"answer {text!r} encodes to no tokens")
    return ids[0]


def _row(tokenizer: Any, batch: ChatBatch, result: Any, position: int, feature: int) -> ReasoningFeature:
    token = tokenizer.decode([int(batch.input_ids[0, position])])
    return ReasoningFeature(
        position,
        token,
        feature,
        float(result.activations[0, position, feature]),
        float(result.attribution[0, position, feature]),
    )


def _draw(active: list, k: int, gen: torch.Generator) -> list[tuple[int, int]]:
    picks = torch.randperm(len(active), generator=gen)[:k].tolist()
    return [tuple(active[i]) for i in picks]


@torch.no_grad()
def _ablated(
    scoped: ScopedModel, batch: ChatBatch, name: str, result: Any, pairs: list, from_logits: Any, target: int
) -> tuple[float, bool]:
    """Metric, and whether the answer is still the argmax, with ``pairs`` (position, feature) ablated."""
    selected = torch.zeros_like(result.activations, dtype=torch.bool)
    for position, feature in pairs:
        selected[0, position, feature] = True
    with ablate_at(scoped, name, result.activations, selected):
        logits = scoped(**batch.model_inputs(), **last_logits_only(scoped)).logits
    return float(from_logits(logits)[0]), int(logits[0, -1].argmax()) == target
