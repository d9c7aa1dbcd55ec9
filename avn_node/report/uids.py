"""Deterministic result UIDs (DESIGN §1): ``2.25.`` + a UUID5 of what the object depends on (PS3.5 B.2).

Rebuilding a result from the same inputs gives the same UIDs, so a crash between building and recording
cannot mint a second identity, and an archive receives each result at most once.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("6a0f7f0e-4d1e-5b7c-9a51-a7e2d1c0b0de")


def derived_uid(*parts: str | int) -> str:
    """``2.25.<uuid5 as integer>`` of the parts, joined unambiguously."""
    key = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, key).int}"
