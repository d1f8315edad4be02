"""Transcoder: reads one site (e.g. MLP input) and predicts another (MLP output)."""

from __future__ import annotations

from scope_hub.dictionaries.sae import SAE


class Transcoder(SAE):
    """Same math as :class:`SAE`, but ``d_out`` may differ from ``d_in`` and the
    target is another site, so :meth:`error` needs ``target=``.

    Example:
        >>> import torch
        >>> from scope_hub.metadata import DictionaryConfig
        >>> tc = Transcoder(DictionaryConfig(type="transcoder", architecture="relu", d_in=4, d_sae=8, d_out=6))
        >>> tc.w_dec.shape
        torch.Size([8, 6])
    """

    type = "transcoder"
