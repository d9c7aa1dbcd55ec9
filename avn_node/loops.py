"""The background loops of a node process: a step called until stopping, at once again when it did work,
else after a tick (or the wait the loop asks for) or when woken; a failing step is logged once per run of
failures, and retried every tick."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("avn_node.serve")
TICK_SECONDS = 0.5


class Loops:
    """Threads running steps until :meth:`stop`."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def spawn(self, name: str, step: Callable[[], bool], what: str, wake: threading.Event | None = None,
              wait: Callable[[], float] | None = None) -> None:  # fmt: skip
        """Run ``step`` (True: it did work) in a thread of its own until :meth:`stop`; between idle steps wait
        ``wait()`` seconds (default a tick) or until ``wake`` is set."""
        thread = threading.Thread(target=self._loop, args=(step, what, wake, wait), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        """Let each running step finish; then every loop has ended."""
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _loop(self, step: Callable[[], bool], what: str, wake: threading.Event | None,
              wait: Callable[[], float] | None) -> None:  # fmt: skip
        failing = False
        while not self.stopping.is_set():
            try:
                did_work = step()
            except Exception:  # noqa: BLE001 - the database holds the work; the next tick tries again
                if not failing:  # a database or broker outage would otherwise log every tick
                    log.exception("%s failed; retrying every %s s", what, TICK_SECONDS)
                failing = True
            else:
                if failing:
                    log.info("%s works again", what)
                failing = False
                if did_work:
                    continue
            seconds = TICK_SECONDS if wait is None or failing else wait()
            if wake is None:
                self.stopping.wait(seconds)
            elif wake.wait(seconds):
                wake.clear()
