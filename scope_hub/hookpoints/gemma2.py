"""Gemma 2 (``Gemma2ForCausalLM``): same sandwich-norm layout and names as Gemma 3.

Example:
    >>> from transformers import Gemma2Config
    >>> str(Gemma2Adapter(Gemma2Config(num_hidden_layers=4)).hookpoint("mlp_in", 3))
    'model.layers.3.pre_feedforward_layernorm.output'
"""

from __future__ import annotations

from scope_hub.hookpoints.base import HookpointAdapter
from scope_hub.hookpoints.gemma3 import GEMMA_SITES


# Parallel to Gemma3Adapter on purpose: one adapter per model_type, the same Gemma module layout.
class Gemma2Adapter(HookpointAdapter):
    """Gemma2ForCausalLM (model_type ``gemma2``), the model Gemma Scope 1 was trained on."""

    family = "gemma2"
    model_types = ("gemma2",)
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    site_templates = GEMMA_SITES
    mlp_modules = ("mlp", "post_feedforward_layernorm")
    attn_residual_template = ("post_attention_layernorm", "output")
