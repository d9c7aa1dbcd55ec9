"""Dispatch: send stored results to each destination, retry with back-off, dead-letter, re-send on demand."""
