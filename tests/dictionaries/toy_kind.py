"""A toy dictionary kind, written as a third party would add one: this file plus one table entry.

``normed_sae``: an SAE whose decoder rows are used at unit norm, ``y = f @ (w_dec / |w_dec|) + b_dec``.
"""

from __future__ import annotations

import torch

from scope_hub.dictionaries.sae import SAE
from scope_hub.kinds import KindInfo

ENTRY = KindInfo(
    "normed_sae",
    "tests.dictionaries.toy_kind:NormedDecoderSAE",
    "an SAE that decodes with unit-norm decoder rows",
    reconstructs_input=True,
)


class NormedDecoderSAE(SAE):
    """:class:`SAE` with the decoder's rows normalised at use."""

    type = "normed_sae"

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        w_dec = self.w_dec / self.w_dec.norm(dim=-1, keepdim=True)
        return self._denormalize_out(features.to(w_dec.dtype) @ w_dec + self.b_dec)
