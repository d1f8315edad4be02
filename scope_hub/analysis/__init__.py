"""Analyses of chat models through attached dictionaries.

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

from __future__ import annotations

from scope_hub.lazy_imports import lazy_attributes

# Lazy re-exports: importing a subpackage (e.g. scope_hub.analysis.circuits) must not import every tool.
_EXPORTS = {
    "ChatBatch": "chat",
    "RefusalScore": "scores",
    "ablate_direction": "direction",
    "ablation_effects": "attribution",
    "add_direction": "direction",
    "analyze_refusal": "refusal",
    "compare_jailbreak": "jailbreak",
    "compare_models": "model_diff",
    "cot_faithfulness": "cot",
    "decoder_alignment": "attribution",
    "feature_attribution": "attribution",
    "load_prompts": "prompts",
    "mean_difference": "direction",
    "refusal_rate": "scores",
    "render_chat": "chat",
}
__getattr__, __dir__, __all__ = lazy_attributes(
    __name__, {name: f"scope_hub.analysis.{module}" for name, module in _EXPORTS.items()}
)
