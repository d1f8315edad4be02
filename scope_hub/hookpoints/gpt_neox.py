"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): layers at ``gpt_neox.layers.{L}``.

With ``use_parallel_residual`` (Pythia's default) attention and MLP both read
the layer input: ``out = x + attn(ln1(x)) + mlp(ln2(x))``. There is then no
residual stream "between" them, but mlp_in (post_attention_layernorm's output,
a norm of x) and mlp_out (the MLP's output) are still well defined, and
mlp_out is still an additive contribution to resid_post.

Example:
    >>> from transformers import GPTNeoXConfig
    >>> str(GPTNeoXAdapter(GPTNeoXConfig(num_hidden_layers=2)).hookpoint("attn_out", 0))
    'gpt_neox.layers.0.attention.dense.input'
"""

from __future__ import annotations

from typing import Any

from scope_hub.hookpoints.base import IO, HookpointAdapter

NEOX_SITES: dict[str, tuple[str, IO]] = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn_out": ("attention.dense", "input"),
    "mlp_in": ("post_attention_layernorm", "output"),
    "mlp_out": ("mlp", "output"),
}


class GPTNeoXAdapter(HookpointAdapter):
    """GPTNeoXForCausalLM (model_type ``gpt_neox``), e.g. Pythia."""

    family = "gpt_neox"
    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    final_norm_path = "gpt_neox.final_layer_norm"
    site_templates = NEOX_SITES
    mlp_modules = ("mlp",)
    attn_residual_template = ("attention", "output")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.parallel_residual = bool(getattr(self.config, "use_parallel_residual", True))
