"""Fault injection for the crash-consistency tests: ``AVN_FAULT=<point>`` makes the process die (as ``kill -9``
would: no cleanup, no flush) the first time it reaches that point. Without the variable it does nothing.
"""

from __future__ import annotations

import os
import sys

POINTS = frozenset({
    "receive.after-temp",  # the dataset is in a temp file; nothing stored, nothing answered
    "receive.after-rename",  # the file is in the store; no row yet, nothing answered
    "receive.after-commit",  # file and row are durable; the sender has no answer yet
    "analyse.mid-analysis",  # the job is running; nothing written
    "analyse.between-results",  # one result file written, its row not recorded
    "dispatch.after-send",  # the archive has the results; the deliveries do not say so yet
})  # fmt: skip


def fault_point(name: str) -> None:
    """Die here when ``AVN_FAULT`` names this point (one of :data:`POINTS`)."""
    assert name in POINTS, name
    if os.environ.get("AVN_FAULT") == name:
        sys.stderr.write(f"AVN_FAULT: dying at {name}\n")
        sys.stderr.flush()
        os._exit(137)
