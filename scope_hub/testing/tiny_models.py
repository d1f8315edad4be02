"""Tiny random-config causal LMs of every supported family, for fast offline tests.

Each factory returns a seeded fp32 model in eval mode, small enough to run a
forward in milliseconds. Where the architecture allows it, attention is built
with ``heads * head_dim != hidden_size`` so a test that mixes up attn_out
(pre-o_proj) with the residual width fails loudly. Norm weights are jittered so
that every norm is a distinct function (a fresh Gemma RMSNorm is the identity
scale, which would let a wrong norm pass). All share one byte-level tokenizer
(:func:`tiny_tokenizer`, vocab 260 = 256 bytes + 4 specials).

Example:
    >>> from scope_hub.testing import tiny_model, tiny_tokenizer
    >>> model = tiny_model("llama")
    >>> ids = tiny_tokenizer()("hi there", return_tensors="pt").input_ids
    >>> model(ids).logits.shape[-1]
    260
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

VOCAB = 260
"""256 byte tokens + <pad>, <bos>, <eos>, <unk>."""
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 256, 257, 258, 259
D_MODEL, N_LAYERS, N_HEADS, HEAD_DIM, N_KV, D_MLP = 64, 3, 4, 24, 2, 128

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=D_MODEL,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=N_HEADS,
    intermediate_size=D_MLP,
    max_position_embeddings=128,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    initializer_range=0.05,
)
_GQA: dict[str, Any] = dict(num_key_value_heads=N_KV, head_dim=HEAD_DIM)


def _gemma3_config() -> Gemma3TextConfig:
    return Gemma3TextConfig(
        **_COMMON,
        **_GQA,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


def _gemma3() -> PreTrainedModel:
    return Gemma3ForCausalLM(_gemma3_config())


def _gemma3_multimodal() -> PreTrainedModel:
    # A 1-layer vision tower just to build the class; the tests feed text only.
    text = _gemma3_config()
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=UNK_ID,
        boi_token_index=UNK_ID,
        eoi_token_index=UNK_ID,
    )
    return Gemma3ForConditionalGeneration(cfg)


def _gemma2() -> PreTrainedModel:
    # eager: Gemma 2's attention logit soft-capping is not supported by sdpa.
    eager: dict[str, Any] = {"attn_implementation": "eager"}  # a generic PretrainedConfig kwarg
    cfg = Gemma2Config(**_COMMON, **_GQA, query_pre_attn_scalar=HEAD_DIM, sliding_window=4, **eager)
    return Gemma2ForCausalLM(cfg)


def _llama() -> PreTrainedModel:
    return LlamaForCausalLM(LlamaConfig(**_COMMON, **_GQA))


def _mistral() -> PreTrainedModel:
    return MistralForCausalLM(MistralConfig(**_COMMON, **_GQA, sliding_window=None))


def _smollm3() -> PreTrainedModel:
    # SmolLM3's config has no head_dim: hidden_size / heads.
    return SmolLM3ForCausalLM(SmolLM3Config(**_COMMON, num_key_value_heads=N_KV))


def _qwen2() -> PreTrainedModel:
    # Qwen 2 derives head_dim from hidden_size / heads; it has q/k/v biases.
    return Qwen2ForCausalLM(Qwen2Config(**_COMMON, num_key_value_heads=N_KV))


def _qwen3() -> PreTrainedModel:
    return Qwen3ForCausalLM(Qwen3Config(**_COMMON, **_GQA))


def _gpt2() -> PreTrainedModel:
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_inner=D_MLP,
        n_positions=128,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        initializer_range=0.05,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


def _gpt_neox(parallel: bool = True) -> PreTrainedModel:
    partial_rotary: dict[str, Any] = {"rotary_pct": 0.5}  # older spelling, still read by GPTNeoXConfig
    cfg = GPTNeoXConfig(**_COMMON, use_parallel_residual=parallel, **partial_rotary)
    return GPTNeoXForCausalLM(cfg)


FACTORIES: dict[str, Callable[[], PreTrainedModel]] = {
    "gemma3": _gemma3,
    "gemma3_multimodal": _gemma3_multimodal,
    "gemma2": _gemma2,
    "llama": _llama,
    "mistral": _mistral,
    "smollm3": _smollm3,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gpt_neox_sequential": lambda: _gpt_neox(parallel=False),
}
"""Family name -> factory of an untrained model (call through :func:`tiny_model`)."""


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """A seeded, fp32, eval-mode tiny causal LM of ``family`` (a key of :data:`FACTORIES`).

    Example:
        >>> m1, m2 = tiny_model("gpt2", seed=1), tiny_model("gpt2", seed=1)
        >>> all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
        True
    """
    if family not in FACTORIES:
        raise KeyError(f"no tiny model for {family!r}; choose from {', '.join(FACTORIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FACTORIES[family]().float()
        _jitter_norms(model, 0.1)
    return model.eval()


def _jitter_norms(model: torch.nn.Module, std: float) -> None:
    # Fresh norms are all identical (weight 1, or 0 for Gemma's 1+w); make each distinct.
    with torch.no_grad():
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                for p in module.parameters(recurse=False):
                    p.add_(torch.randn_like(p) * std)


# Parallel on purpose: one named, documented shortcut per family for extenders (all call tiny_model).
def tiny_gemma3(seed: int = 0) -> PreTrainedModel:
    """Tiny Gemma3ForCausalLM (3 layers, d_model 64, 4 heads x 24, 2 KV heads, sliding + full attention)."""
    return tiny_model("gemma3", seed)


def tiny_gemma2(seed: int = 0) -> PreTrainedModel:
    """Tiny Gemma2ForCausalLM (eager attention)."""
    return tiny_model("gemma2", seed)


def tiny_llama(seed: int = 0) -> PreTrainedModel:
    """Tiny LlamaForCausalLM (the SmolLM2 architecture)."""
    return tiny_model("llama", seed)


def tiny_qwen2(seed: int = 0) -> PreTrainedModel:
    """Tiny Qwen2ForCausalLM."""
    return tiny_model("qwen2", seed)


def tiny_qwen3(seed: int = 0) -> PreTrainedModel:
    """Tiny Qwen3ForCausalLM."""
    return tiny_model("qwen3", seed)


def tiny_gpt2(seed: int = 0) -> PreTrainedModel:
    """Tiny GPT2LMHeadModel."""
    return tiny_model("gpt2", seed)


def tiny_gpt_neox(seed: int = 0, parallel: bool = True) -> PreTrainedModel:
    """Tiny GPTNeoXForCausalLM (parallel residual by default, like Pythia)."""
    return tiny_model("gpt_neox" if parallel else "gpt_neox_sequential", seed)


@lru_cache(maxsize=1)
def _tokenizer_object() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # Byte-level BPE without merges: every byte is one token (ids 0..255), so any text encodes.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    vocab = {byte_to_char[b]: b for b in range(256)}
    vocab.update({"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID, "<unk>": UNK_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _byte_of(char: str) -> int:
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table[char]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer matching the tiny models' vocab (ids 0..255 are the UTF-8 bytes).

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok("hi").input_ids, tok.decode([104, 105])
        ([257, 104, 105], 'hi')
    """
    from tokenizers.processors import TemplateProcessing

    obj = _tokenizer_object()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=obj, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    # Prepend <bos> like the real Gemma / Llama tokenizers do.
    backend: Any = tok._tokenizer
    backend.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return tok
