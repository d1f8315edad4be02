"""Analyses of chat models through attached dictionaries (issue #10).

One concern per module:

* :mod:`~scope_hub.analysis.chat`: chat-template rendering with per-token role tags;
* :mod:`~scope_hub.analysis.scores`: refusal score (opener log-prob gap) and string-matched refusal rate;
* :mod:`~scope_hub.analysis.direction`: difference-of-means directions, direction ablation/addition;
* :mod:`~scope_hub.analysis.attribution`: decoder alignment, activation x gradient, ablation effects;
* :mod:`~scope_hub.analysis.refusal`: the refusal pipeline end to end;
* :mod:`~scope_hub.analysis.jailbreak`: features a jailbreak wrapper suppresses or adds;
* :mod:`~scope_hub.analysis.model_diff`: one dictionary on two models (base vs IT), FVU;
* :mod:`~scope_hub.analysis.cot`: chain-of-thought faithfulness (attribution + ablation);
* :mod:`~scope_hub.analysis.dashboard`: static HTML feature dashboards.

See docs/analysis.md for what each tool measures and the numbers on SmolLM2-135M-Instruct.

Example:
    >>> from scope_hub.analysis import RefusalScore, load_prompts
    >>> RefusalScore().mode, len(load_prompts("harmful_test"))
    ('phrase', 16)
"""

from scope_hub.analysis.attribution import (
    ablation_effects,
    decoder_alignment,
    feature_attribution,
)
from scope_hub.analysis.chat import ChatBatch, render_chat
from scope_hub.analysis.cot import cot_faithfulness
from scope_hub.analysis.direction import (
    ablate_direction,
    add_direction,
    mean_difference,
)
from scope_hub.analysis.jailbreak import compare_jailbreak
from scope_hub.analysis.model_diff import compare_models
from scope_hub.analysis.prompts import load_prompts
from scope_hub.analysis.refusal import analyze_refusal
from scope_hub.analysis.scores import RefusalScore, refusal_rate

__all__ = [
    "ChatBatch",
    "RefusalScore",
    "ablate_direction",
    "ablation_effects",
    "add_direction",
    "analyze_refusal",
    "compare_jailbreak",
    "compare_models",
    "cot_faithfulness",
    "decoder_alignment",
    "feature_attribution",
    "load_prompts",
    "mean_difference",
    "refusal_rate",
    "render_chat",
]
