"""Dictionary kinds: SAE, transcoder, skip transcoder, cross-layer transcoder, crosscoder.

Example:
    >>> from scope_hub.dictionaries import KINDS
    >>> sorted(KINDS)
    ['clt', 'crosscoder', 'sae', 'skip_transcoder', 'transcoder']
"""

from scope_hub.dictionaries.base import Dictionary
from scope_hub.dictionaries.clt import CrossLayerTranscoder
from scope_hub.dictionaries.crosscoder import Crosscoder
from scope_hub.dictionaries.kinds import ACTIVATIONS, KINDS
from scope_hub.dictionaries.sae import SAE
from scope_hub.dictionaries.skip_transcoder import SkipTranscoder
from scope_hub.dictionaries.sparse import SparseFeatures
from scope_hub.dictionaries.transcoder import Transcoder

__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "SAE",
    "CrossLayerTranscoder",
    "Crosscoder",
    "Dictionary",
    "SkipTranscoder",
    "SparseFeatures",
    "Transcoder",
]
