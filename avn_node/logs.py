"""Logging: plain lines or one JSON object per line (``[logging] json``); UIDs and AE titles, never names."""

from __future__ import annotations

import json
import logging
import sys

STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; fields passed as ``extra`` (e.g. by node events) are kept, as given."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in STANDARD_FIELDS and k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Log to stderr at ``level``; pynetdicom's own chatter only from WARNING up; Python warnings as records."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "highdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom both logs and warns each problem: keep the warning, which Python shows once per place in the
    # code, and send it through this handler (with a timestamp) instead of bare to stderr.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.captureWarnings(True)
