"""The tables of kinds: dictionary types and activation functions, one entry each."""

from __future__ import annotations

from scope_hub.dictionaries.activation import Activation
from scope_hub.dictionaries.base import Dictionary
from scope_hub.dictionaries.batchtopk import BatchTopK
from scope_hub.dictionaries.clt import CrossLayerTranscoder
from scope_hub.dictionaries.crosscoder import Crosscoder
from scope_hub.dictionaries.jumprelu import JumpReLU
from scope_hub.dictionaries.relu import ReLU
from scope_hub.dictionaries.sae import SAE
from scope_hub.dictionaries.skip_transcoder import SkipTranscoder
from scope_hub.dictionaries.topk import TopK
from scope_hub.dictionaries.transcoder import Transcoder

KINDS: dict[str, type[Dictionary]] = {
    cls.type: cls for cls in (SAE, Transcoder, SkipTranscoder, CrossLayerTranscoder, Crosscoder)
}
"""Dictionary class for each ``config.type``."""

ACTIVATIONS: dict[str, type[Activation]] = {cls.name: cls for cls in (JumpReLU, TopK, BatchTopK, ReLU)}
"""Activation strategy for each ``config.architecture``."""
