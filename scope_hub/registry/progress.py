"""Transfer progress bars (tqdm), silent when stderr is not a terminal or ``CI`` is set.

Example:
    >>> with TransferProgress(enabled=False).bar(100, "upload") as update:
    ...     update(100)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from scope_hub.registry.settings import progress_enabled


class TransferProgress:
    """Factory of byte-counting bars; one per transfer."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = progress_enabled() if enabled is None else enabled

    @contextmanager
    def bar(self, total: int, desc: str, unit: str = "B") -> Iterator[Callable[[int], None]]:
        """Yield ``update(n)`` (bytes, or items when ``unit`` is not "B"); a no-op when disabled."""
        if not self.enabled:
            yield lambda n: None
            return
        from tqdm.auto import tqdm  # imported only when a bar is really drawn

        scaled = unit == "B"
        with tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=scaled,
            unit_divisor=1024,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            yield bar.update
