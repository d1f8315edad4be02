"""Planted sparse dictionaries: data with known unit-norm atoms and known sparsity.

Each token draws a sparse non-negative code ``c`` (atom i is active with
probability ``p_i``, magnitude uniform in [0.5, 1.5]); the input is
``x = c @ A`` and the target ``c @ D`` (``D = A`` for SAEs, separate unit atoms
for transcoders, plus ``x @ M`` for skip transcoders). For L layers, every
layer has its own codes and input atoms, and layer i's codes write into every
layer j >= i (the generative model of a cross-layer transcoder).

Training on this data should recover the atoms: :func:`atom_recovery` gives the
mean over true atoms of the best cosine with a learned decoder row.

Example:
    >>> planted = PlantedDictionary.create(n_atoms=16, d_in=8, active_per_token=2.0, seed=0)
    >>> x, target = planted.sample(5, torch.Generator().manual_seed(0))
    >>> x.shape, bool(torch.equal(x, target))
    (torch.Size([5, 8]), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from scope_hub.errors import ConfigError
from scope_hub.kinds import SAE, SKIP_TRANSCODER

if TYPE_CHECKING:
    from trainers.config import TrainConfig


def _unit_rows(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random directions: Gaussian rows (last axes flattened) normalised to unit norm."""
    w = torch.randn(shape, generator=gen)
    flat = w.reshape(shape[0], -1)
    return (flat / flat.norm(dim=1, keepdim=True)).reshape(shape)


@dataclass
class PlantedDictionary:
    """The true generative model. ``enc_atoms[i]`` [n_atoms, d_in] are layer i's input atoms;
    ``dec_atoms[i]`` [n_atoms, L - i, d_out] the outputs layer i's codes write (unit norm per atom)."""

    enc_atoms: list[torch.Tensor]
    dec_atoms: list[torch.Tensor]
    probabilities: torch.Tensor
    skip: list[torch.Tensor] | None = None
    kind: str = "sae"

    @classmethod
    def create(
        cls,
        *,
        n_atoms: int,
        d_in: int,
        d_out: int | None = None,
        n_layers: int = 1,
        active_per_token: float = 3.0,
        kind: str = "sae",
        seed: int = 0,
    ) -> PlantedDictionary:
        """Draw atoms for ``kind`` (sae, transcoder, skip_transcoder, clt).

        Example:
            >>> p = PlantedDictionary.create(n_atoms=8, d_in=4, d_out=6, n_layers=3, kind="clt")
            >>> [tuple(d.shape) for d in p.dec_atoms]
            [(8, 3, 6), (8, 2, 6), (8, 1, 6)]
        """
        gen = torch.Generator().manual_seed(seed)
        d_out = d_out or d_in
        if kind == SAE and (d_out != d_in or n_layers != 1):
            raise ValueError("a planted sae reconstructs its input: d_out = d_in, one layer")
        enc = [_unit_rows((n_atoms, d_in), gen) for _ in range(n_layers)]
        if kind == SAE:
            dec = [enc[0].unsqueeze(1)]
        else:
            dec = [_unit_rows((n_atoms, n_layers - i, d_out), gen) for i in range(n_layers)]
        skip = None
        if kind == SKIP_TRANSCODER:
            skip = [torch.randn(d_in, d_out, generator=gen) * 0.3 / d_in**0.5 for _ in range(n_layers)]
        probs = torch.full((n_atoms,), min(1.0, active_per_token / n_atoms))
        return cls(enc, dec, probs, skip, kind)

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> PlantedDictionary:
        """The planted dictionary a config's ``synthetic`` section and ``dictionary.type`` describe."""
        s = cfg.synthetic
        if s is None:
            raise ConfigError("the config has no synthetic section; set synthetic.d_in, synthetic.n_atoms, ...")
        return cls.create(
            n_atoms=s.n_atoms,
            d_in=s.d_in,
            d_out=s.d_out,
            n_layers=s.n_layers,
            active_per_token=s.active_per_token,
            kind=cfg.dictionary.type,
            seed=s.seed,
        )

    @property
    def n_layers(self) -> int:
        return len(self.enc_atoms)

    def sample(self, n_tokens: int, gen: torch.Generator, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)``: ``[n, d_in]``/``[n, d_out]`` for one layer, ``[n, L, d]`` for several.

        ``noise`` adds dense Gaussian noise to the inputs (before the skip path reads them, so
        only a skip connection can reproduce its share of the target).
        """
        n_layers, n_atoms = self.n_layers, self.probabilities.numel()
        codes = []
        for _ in range(n_layers):
            active = torch.rand(n_tokens, n_atoms, generator=gen) < self.probabilities
            magnitude = torch.rand(n_tokens, n_atoms, generator=gen) + 0.5
            codes.append(active * magnitude)
        xs = [codes[i] @ self.enc_atoms[i] for i in range(n_layers)]
        if noise:
            xs = [x + noise * torch.randn(x.shape, generator=gen) for x in xs]
        d_out = self.dec_atoms[0].shape[-1]
        ys = [torch.zeros(n_tokens, d_out) for _ in range(n_layers)]
        for i in range(n_layers):
            written = torch.einsum("na,ajd->njd", codes[i], self.dec_atoms[i])
            for offset in range(n_layers - i):
                ys[i + offset] += written[:, offset]
        if self.skip is not None:
            ys = [y + x @ m for y, x, m in zip(ys, xs, self.skip)]
        if n_layers == 1:
            return xs[0], (xs[0] if self.kind == SAE else ys[0])
        return torch.stack(xs, 1), torch.stack(ys, 1)


def atom_recovery(true_atoms: torch.Tensor, learned_rows: torch.Tensor) -> torch.Tensor:
    """Per true atom, the best cosine similarity with any learned row (rows flattened).

    Example:
        >>> atoms = torch.eye(3)
        >>> atom_recovery(atoms, torch.cat([atoms, -atoms])).tolist()
        [1.0, 1.0, 1.0]
    """
    a = true_atoms.reshape(true_atoms.shape[0], -1).double()
    b = learned_rows.reshape(learned_rows.shape[0], -1).double()
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).max(dim=1).values.float()
