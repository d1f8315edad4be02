"""A tqdm progress bar with loss, L0, FVU and tok/s; quiet off a terminal and under CI.

Example:
    >>> bar = Progress(total=10, initial=0, enabled=False, batch_tokens=4096)
    >>> bar.update(5, {"loss": 1.0, "l0": 32.0, "fvu": 0.1, "tok_s": 2000.0})
    >>> bar.close()
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from scope_hub.settings import progress_enabled


def show_progress_by_default() -> bool:
    """True on an interactive terminal outside CI (and without SCOPE_HUB_QUIET)."""
    return progress_enabled()


class Progress:
    """Steps as the bar's unit; the postfix shows the latest logged statistics."""

    def __init__(self, total: int, initial: int, enabled: bool | None, batch_tokens: int) -> None:
        enabled = show_progress_by_default() if enabled is None else enabled
        self._bar = tqdm(
            total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True, file=sys.stderr
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
            tok_s=f"{stats.get('tok_s', 0):.0f}",
            refresh=False,
        )

    def close(self) -> None:
        self._bar.close()
