"""What a user sees while a run goes: a tqdm bar on a terminal, plain lines off it, ``metrics.jsonl`` always.

* :class:`Progress`: the bar with loss, L0, FVU, dead fraction and tok/s (one per dictionary in a run of several);
* :class:`PlainTicker`: a plain line about every 30 seconds for long loops (harvesting) when stderr is
  not a terminal, so ``make demo | tee log`` and batch-job logs show progress;
* :class:`RunLog`: rank 0's record of one dictionary's training: every logged step appended to
  ``metrics.jsonl`` in its output folder (step, tokens, tok/s, loss parts, L0, FVU, dead fraction), a
  plain line every ``output.log_every`` steps off a terminal, and optionally Weights & Biases.

Example:
    >>> bar = Progress(total=10, initial=0, enabled=False, batch_tokens=4096)
    >>> bar.update(5, {"loss": 1.0, "l0": 32.0, "fvu": 0.1, "tok_s": 2000.0})
    >>> bar.close()
    >>> format_line("resid_post/layer_3", 20, 100, {"tokens": 81920, "tok_s": 2345.0, "loss": 0.5, "l0": 31.9,
    ...             "fvu": 0.125, "dead": 0.0})
    '[resid_post/layer_3] step 20/100 tokens 81920 tok/s 2345 loss 0.5 l0 31.9 fvu 0.125 dead 0.0%'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scope_hub.atomic_files import atomic_write_text
from scope_hub.settings import progress_enabled

METRICS_FILE = "metrics.jsonl"
TICK_SECONDS = 30.0
"""Seconds between plain progress lines of long loops off a terminal."""


def show_progress_by_default() -> bool:
    """True on an interactive terminal outside CI (and without SCOPE_HUB_QUIET)."""
    return progress_enabled()


class Progress:
    """Steps as the bar's unit; the postfix shows the latest logged statistics."""

    def __init__(
        self,
        total: int,
        initial: int,
        enabled: bool | None,
        batch_tokens: int,
        desc: str | None = None,
        position: int | None = None,
    ) -> None:
        enabled = show_progress_by_default() if enabled is None else enabled
        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            desc=desc,
            position=position,
        )
        self._last = initial

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Advance to ``step`` and show ``stats``."""
        self._bar.update(step - self._last)
        self._last = step
        self._bar.set_postfix(
            loss=f"{stats.get('loss', 0):.4g}",
            l0=f"{stats.get('l0', 0):.1f}",
            fvu=f"{stats.get('fvu', 0):.3f}",
            dead=f"{100 * stats.get('dead', 0):.1f}%",
            tok_s=f"{stats.get('tok_s', 0):.0f}",
            refresh=False,
        )

    def close(self) -> None:
        self._bar.close()


class PlainTicker:
    """Prints ``label: done/total unit (pct), rate/s, eta`` about every ``every`` seconds when enabled."""

    def __init__(self, label: str, total: int, unit: str, enabled: bool, world: int = 1, every: float = TICK_SECONDS):
        self.label, self.total, self.unit, self.enabled, self.world, self.every = (
            label,
            total,
            unit,
            enabled,
            world,
            every,
        )
        self.done = 0
        self._start = self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            ranks = f" (this rank of {self.world})" if self.world > 1 else ""
            sys.stderr.write(
                f"{self.label}: {self.done}/{self.total} {self.unit}{ranks} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.1f} {self.unit}/s, eta {eta:.0f}s\n"
            )
            sys.stderr.flush()

    def __enter__(self) -> PlainTicker:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def format_line(name: str, step: int, total: int, stats: dict[str, float]) -> str:
    """One plain progress line of a dictionary's training."""
    prefix = f"[{name}] " if name else ""
    return (
        f"{prefix}step {step}/{total} tokens {int(stats.get('tokens', 0))} tok/s {stats.get('tok_s', 0):.0f} "
        f"loss {stats.get('loss', 0):.4g} l0 {stats.get('l0', 0):.1f} fvu {stats.get('fvu', 0):.3f} "
        f"dead {100 * stats.get('dead', 0):.1f}%"
    )


class RunLog:
    """Rank 0's log of one dictionary: ``metrics.jsonl``, plain lines off a terminal, W&B (see module doc).

    ``output_dir`` is a folder or an fsspec URL; on a URL the whole file is put again (atomically) at
    every logged step. ``lines`` prints plain lines; ``bar`` shows a tqdm bar (a run of several
    dictionaries: one per dictionary, at ``position``).
    """

    def __init__(
        self,
        name: str,
        output_dir: str,
        total: int,
        *,
        batch_tokens: int,
        log_every: int,
        lines: bool,
        bar: bool = False,
        position: int | None = None,
        wandb_run: Any = None,
        write: bool = True,
    ) -> None:
        self.write = write
        self.name, self.total, self.batch_tokens, self.log_every = name, total, batch_tokens, log_every
        self.lines, self.wandb_run = lines, wandb_run
        self.records: list[dict[str, Any]] = []
        self._seen, self._printed, self._rewrite = 0, 0, True
        self._bar = Progress(total, 0, True, batch_tokens, desc=name or None, position=position) if bar else None
        self._local = None if "://" in output_dir and not output_dir.startswith("file://") else output_dir
        self._url = output_dir
        if self._local is not None:
            from scope_hub.registry.backends.file import path_of_url

            self._local = str(path_of_url(output_dir))

    def observe(self, history: list[dict[str, float]]) -> None:
        """Log the entries of a trainer's ``history`` not logged yet."""
        if not self.write:
            return
        fresh = history[self._seen :]
        if fresh and self._seen == 0:  # a resumed run: keep what the killed run logged before it
            self.records = [r for r in self._existing() if r["step"] < fresh[0]["step"]]
        self._seen = len(history)
        added = []
        for stats in fresh:
            step = int(stats["step"])
            record = {
                "step": step,
                "tokens": step * self.batch_tokens,
                **{k: v for k, v in stats.items() if k != "step"},
            }
            self.records.append(record)
            added.append(record)
            if self.lines and (step - self._printed >= self.log_every or step == self.total):
                self._printed = step
                sys.stderr.write(format_line(self.name, step, self.total, record) + "\n")
                sys.stderr.flush()
            if self._bar is not None:
                self._bar.update(step, record)
            if self.wandb_run is not None:
                prefix = f"{self.name}/" if self.name else ""
                self.wandb_run.log({f"{prefix}{k}": v for k, v in record.items() if k != "step"}, step=step)
        if added:
            self.flush(added)

    def _existing(self) -> list[dict[str, Any]]:
        try:
            if self._local is not None:
                text = (Path(self._local) / METRICS_FILE).read_text()
            else:
                from trainers.harvest_shards import open_store

                text = open_store(self._url).read_bytes(METRICS_FILE).decode()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)

    def flush(self, fresh: list[dict[str, Any]] | None = None) -> None:
        """Write the records: appended to a local file, or the whole file put to a store."""
        if self._local is not None:
            path = Path(self._local) / METRICS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh is None or not path.exists() or len(self.records) == len(fresh) or self._rewrite:
                self._rewrite = False
                atomic_write_text(path, self.text())  # a kill mid-write must not truncate what a resume reads
            else:
                with path.open("a") as handle:
                    handle.write("".join(json.dumps(r) + "\n" for r in fresh))
            return
        from trainers.harvest_shards import open_store

        open_store(self._url).put_bytes(METRICS_FILE, self.text().encode())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def start_wandb(cfg: Any, names: list[str]) -> Any:
    """A W&B run for ``cfg.output.wandb`` (None when unset); raises ConfigError when wandb is missing."""
    settings = cfg.output.wandb
    if settings is None:
        return None
    try:
        import wandb
    except ImportError:
        from scope_hub.errors import ConfigError

        raise ConfigError("output.wandb needs the wandb package: pip install 'scope-hub[wandb]'") from None
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=settings.name,
        tags=settings.tags,
        config={**cfg.model_dump(mode="json"), "dictionaries": names},
    )
