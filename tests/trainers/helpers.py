"""Shared helpers for the trainer tests: planted-dictionary runs with small, fast settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer
from trainers.config import TrainConfig, load_config
from trainers.sources import SyntheticSource
from trainers.synthetic import PlantedDictionary, atom_recovery
from trainers.trainer import Trainer, TrainResult

D_IN, N_ATOMS, ACTIVE = 32, 64, 3.0
"""Planted data: 64 unit-norm atoms in 32 dimensions (2x overcomplete), ~3 active per token."""

FAST = [
    f"synthetic.d_in={D_IN}",
    f"synthetic.n_atoms={N_ATOMS}",
    f"synthetic.active_per_token={ACTIVE}",
    f"dictionary.d_sae={N_ATOMS}",
    "train.batch_size=1024",
    "optim.lr=1e-2",
    "optim.warmup_steps=10",
    "loss.l0_warmup_steps=50",
    "train.log_every=20",
    "train.threads=1",
]


SMALL_TOPK = [
    "synthetic.d_in=16",
    "synthetic.n_atoms=32",
    "dictionary.d_sae=32",
    "dictionary.architecture=topk",
    "dictionary.k=3",
    "train.batch_size=512",
    "optim.lr=1e-2",
]
"""Overrides for a small TopK SAE on planted data, for runs whose subject is not the training."""


def tiny_model_folder(folder: Path, text: str) -> Path:
    """``folder`` holding a tiny Gemma 3, its tokenizer, and ``text`` (text.txt) to harvest from."""
    tiny_gemma3().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "text.txt").write_text(text)
    return folder


def config(*overrides: str) -> TrainConfig:
    """A planted-data config with the fast defaults above plus ``overrides``."""
    return load_config(None, [*FAST, *overrides])


@dataclass
class PlantedRun:
    planted: PlantedDictionary
    trainer: Trainer
    result: TrainResult

    def recovery(self) -> list[float]:
        """Per layer: mean over true atoms of the best cosine with a learned decoder row (signed)."""
        return [
            float(atom_recovery(self.planted.dec_atoms[i].reshape(N_ATOMS, -1), lp.w_dec_flat().detach()).mean())
            for i, lp in enumerate(self.trainer.params)
        ]

    @property
    def last(self) -> dict[str, float]:
        return self.result.history[-1]


def run_planted(*overrides: str, noise: float = 0.0, planted: PlantedDictionary | None = None) -> PlantedRun:
    """Train on planted data; the planted atoms come from ``synthetic.seed`` (or ``planted``),
    the token stream from ``train.seed``."""
    cfg = config(*overrides)
    planted = planted or PlantedDictionary.for_config(cfg)
    trainer = Trainer(cfg, SyntheticSource(planted, seed=cfg.train.seed, noise=noise))
    return PlantedRun(planted, trainer, trainer.run())


def eval_metrics(run: PlantedRun, tokens: int = 8192, dictionary=None):
    """Metrics of the exported dictionary (or ``dictionary``) on fresh planted tokens, via the inference path."""
    from trainers.evals import evaluate
    from trainers.publish import export_dictionary

    dictionary = dictionary if dictionary is not None else export_dictionary(run.result, run.trainer.cfg, {})
    return evaluate(dictionary, run.trainer.source.eval_batches(tokens, 4096))


def eval_fvu(run: PlantedRun, tokens: int = 8192) -> float:
    """FVU of the exported dictionary on fresh planted tokens."""
    return float(eval_metrics(run, tokens).fvu)
