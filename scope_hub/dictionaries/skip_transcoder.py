"""Skip transcoder: a transcoder plus an affine skip path ``x @ affine_skip_connection``."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.transcoder import Transcoder


class SkipTranscoder(Transcoder):
    """``y = f @ w_dec + b_dec + x @ affine_skip_connection`` (Gemma Scope 2's ``_affine`` folders).

    :meth:`decode` gives the feature part only; :meth:`forward` adds the skip
    path, which needs the input.

    Example:
        >>> import torch
        >>> from scope_hub.metadata import DictionaryConfig
        >>> st = SkipTranscoder(DictionaryConfig(type="skip_transcoder", architecture="relu", d_in=4, d_sae=8))
        >>> st.affine_skip_connection.shape
        torch.Size([4, 4])
    """

    type = "skip_transcoder"

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The skip path's contribution ``x @ affine_skip_connection`` (in output units)."""
        x = self._normalize_in(x.to(self.w_enc.dtype))
        return self._denormalize_out(x @ self.affine_skip_connection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.decode(self.encode(x)) + self.skip(x)).to(x.dtype)
