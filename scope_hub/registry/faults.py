"""Named fault points, so tests can kill or pause a real process at an exact step of a push.

Set ``SCOPE_HUB_FAULT=<point>`` (or ``<point>:kill``) to SIGKILL the process when it reaches
``<point>``; ``<point>:pause`` writes the file named by ``SCOPE_HUB_FAULT_READY`` and sleeps,
so a test can kill it from outside; ``<point>:wait`` writes ``$SCOPE_HUB_FAULT_READY.<pid>``
and waits until the file ``SCOPE_HUB_FAULT_GO`` exists (a start barrier for races), once.
Unset, a fault point costs one dict lookup.

Points used by pushes: ``staged``, ``blob_uploaded``, ``blob_tmp_written`` (file://, a blob
fully in its temp file but not renamed), ``manifest_tmp_written`` (file://),
``before_manifest``, ``manifest_written``, ``index_appended``.
Point used by pulls: ``first_chunk_downloaded`` (the first chunk of a blob is in the cache's
temp file, the rest still to come: a download cut half-way).

Example:
    >>> fault_point("staged")  # no-op unless SCOPE_HUB_FAULT names it
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from scope_hub.settings import settings

FAULT_ENV = "SCOPE_HUB_FAULT"
READY_ENV = "SCOPE_HUB_FAULT_READY"
GO_ENV = "SCOPE_HUB_FAULT_GO"
_waited: set[str] = set()


def fault_point(name: str) -> None:
    """Kill or pause this process if ``SCOPE_HUB_FAULT`` names ``name``."""
    spec = settings().fault
    if not spec:
        return
    point, _, action = spec.partition(":")
    if point != name:
        return
    if action == "wait":
        if name not in _waited:
            _waited.add(name)
            Path(f"{settings().fault_ready}.{os.getpid()}").write_text("ready")
            while not Path(str(settings().fault_go)).exists():
                time.sleep(0.01)
        return
    if action == "pause":
        ready = settings().fault_ready
        if ready:
            Path(ready).write_text(str(os.getpid()))
        while True:  # wait to be killed from outside
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)
