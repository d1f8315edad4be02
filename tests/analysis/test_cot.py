"""CoT faithfulness on a planted circuit: a reasoning-token feature that an answer logit reads."""

from __future__ import annotations

import contextlib

import pytest
import torch

from scope_hub.analysis.chat import render_chat
from scope_hub.analysis.cot import cot_faithfulness, reasoning_mask
from scope_hub.hooks import hook
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.tiny_models import tiny_llama
from tests.analysis.helpers import (
    chat_tokenizer,
    plant_direction,
    read_out,
    sae_with_feature,
    unit,
)

FEATURE = 5
QUESTION, REASONING = "Which number did I think of?", "I thought of 7, then stopped."


def _mover(carrier: torch.Tensor, answer_dir: torch.Tensor, beta: float = 0.5):
    # A hand-made 'attention head': the last position receives the carrier's presence above the
    # natural noise level, small enough that the final norm does not saturate the logit.
    def fn(x: torch.Tensor) -> torch.Tensor:
        amount = torch.relu(x @ carrier - 1.0).sum(-1, keepdim=True)  # [batch, 1]
        out = x.clone()
        out[:, -1] = out[:, -1] + beta * amount * answer_dir
        return out

    return fn


@pytest.fixture(scope="module")
def scoped():
    model = tiny_llama(2)
    carrier, answer_dir = unit(11), unit(12)
    read_out(model, answer_dir, "A", "B", beta=1.0)
    with contextlib.ExitStack() as stack:
        plant_direction(model, carrier, ord("7"), alpha=4.0, only_at=True, stack=stack)
        stack.enter_context(hook(model, "model.layers.2.output", _mover(carrier, answer_dir)))
        yield ScopedModel.from_pretrained(
            model, dictionaries={"sae": sae_with_feature(carrier, FEATURE, bias=-0.5, other_bias=0.0)}
        )


def test_attribution_and_ablation_find_the_planted_reasoning_feature(scoped):
    tok = chat_tokenizer()
    report = cot_faithfulness(
        scoped,
        "sae",
        tok,
        QUESTION,
        REASONING,
        "A",
        alternative="B",
        answer_prefix=" Answer:",
        top_k=5,
        ks=(1, 3),
        n_random=4,
    )
    first = report.top[0]
    assert (first.feature, first.token) == (FEATURE, "7"), report.to_markdown()
    assert first.attribution > 10 * abs(report.top[1].attribution)
    assert report.metric > 5 and report.answer_is_top
    top1 = report.ablations[0]
    assert top1.k == 1 and top1.top_delta < -0.6 * report.metric
    assert abs(top1.random_delta) < 0.1 * abs(top1.top_delta)
    assert report.ablations[-1].k == "all" and report.ablations[-1].top_delta < -0.6 * report.metric
    assert "## Ablation test" in report.to_markdown()


def test_reasoning_mask_excludes_question_and_answer_prefix():
    tok = chat_tokenizer()
    batch = render_chat(tok, [QUESTION], continuations=[REASONING + " Answer:"])
    mask = reasoning_mask(tok, QUESTION, REASONING, batch)
    assert tok.decode(batch.input_ids[0][mask[0]]) == REASONING
