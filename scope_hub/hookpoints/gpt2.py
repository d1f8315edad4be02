"""GPT-2 (``GPT2LMHeadModel``): blocks at ``transformer.h.{L}``, LayerNorms ln_1 / ln_2 / ln_f.

attn_out is the input of ``attn.c_proj`` (heads merged, before the output
projection), matching the other families; mlp_in is ln_2's output.

Example:
    >>> from transformers import GPT2Config
    >>> str(GPT2Adapter(GPT2Config(n_layer=2)).hookpoint("mlp_in", 1))
    'transformer.h.1.ln_2.output'
"""

from __future__ import annotations

from scope_hub.hookpoints.base import IO, HookpointAdapter

GPT2_SITES: dict[str, tuple[str, IO]] = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn_out": ("attn.c_proj", "input"),
    "mlp_in": ("ln_2", "output"),
    "mlp_out": ("mlp", "output"),
}


class GPT2Adapter(HookpointAdapter):
    """GPT2LMHeadModel (model_type ``gpt2``)."""

    family = "gpt2"
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    final_norm_path = "transformer.ln_f"
    site_templates = GPT2_SITES
    mlp_modules = ("mlp",)
    attn_residual_template = ("attn", "output")

    @property
    def d_mlp(self) -> int:
        return int(self.config.n_inner or 4 * self.d_model)
