"""Read ahead: each accepted instance is decoded, and read by its analyzer, while its study waits out its idle
time; the case's job then takes the dataset and its reading instead of doing that work after completion.

The C-STORE handler itself never decodes (DESIGN §7): two loops of their own do. One decodes, woken by
``instance.accepted`` events; the other hands what was decoded to the analyzer (:meth:`Analyzer.read_ahead`), so
one instance is decoded while the one before is read. The codecs (OpenJPEG, CharLS, libjpeg) hold Python's GIL
while they decode, so a compressed instance is decoded in one of :data:`DECODERS` spawned processes
(:mod:`.decompress`) and comes back in Explicit VR Little Endian (pydicom's ``decompress``, same UIDs); an
uncompressed one is only read here. The classifier's crops come from those full-resolution pixels as from any
other.

Memory and CPU are bounded: while :data:`BUDGET_BYTES` of datasets are decoded and wait for their jobs, or more
than :data:`BURST` instances wait or are in flight, further instances are not read ahead, and one whose job has not
come within :data:`HOLD_SECONDS` is dropped. A job whose instance is not held (over budget, part of a burst,
undecodable, another process's with Celery) reads it itself as before; one still in flight is waited for.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.analyzers import Analyzer
from avn_node.analyse.decompress import decompressed, ready
from avn_node.events import NodeEvent
from avn_node.parallel import spawn_pool
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Instance, InstanceState

log = logging.getLogger("avn_node.analyse")
BUDGET_BYTES = 96 * 2**20  # pixel data and its decoded array: 6 radiographs of 2048² at 16 bits
BACKLOG = 1024  # instances waiting to be decoded; beyond it they are read by their job
BURST = 8  # more waiting than this: a burst, whose backlog is left to the jobs (ingest keeps the CPU)
HOLD_SECONDS = 600.0
DECODERS = 2  # decoding processes: the two images of an AP + FL study at once
WAIT_SECONDS = 10.0  # how long a job waits for its instance still in flight


def _held_bytes(ds: Dataset) -> int:
    """What holding ``ds`` costs: its pixel data, and as much again for the decoded array."""
    return 2 * len(ds.PixelData)


class ReadAhead:
    """Datasets read ahead by file key, within :data:`BUDGET_BYTES`; :meth:`close` ends the decoding process."""

    def __init__(self, sessions: sessionmaker[Session], files: LocalFileStore, analyzers: Mapping[str, Analyzer],
                 budget: int = BUDGET_BYTES) -> None:  # fmt: skip
        self.sessions, self.files, self.analyzers, self.budget = sessions, files, analyzers, budget
        self.waiting: queue.Queue[str] = queue.Queue(BACKLOG)
        self.arrived = threading.Event()  # wakes the decoding loop
        self.decoded = threading.Event()  # wakes the reading loop
        self._decoded_queue: queue.Queue[tuple[str, str, Dataset]] = queue.Queue()  # key, analyzer, dataset
        self._held: dict[str, tuple[Dataset, int, float]] = {}  # key → dataset, bytes, when read
        self._bytes = 0
        self._pending: dict[str, int] = {}  # keys being decoded or read now → the bytes counted for them
        self._taken: deque[str] = deque(maxlen=BACKLOG)  # keys a job asked for: no use reading them later
        self._changed = threading.Condition()  # guards the three above
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the decoding processes (in the background: they are ready a moment later)."""
        self._pool = spawn_pool(DECODERS)
        for _ in range(DECODERS):
            self._pool.submit(ready)

    def on_event(self, event: NodeEvent) -> None:
        """Subscriber: queue each accepted instance (by SOP Instance UID)."""
        if event.kind == "instance.accepted":
            try:
                self.waiting.put_nowait(event.subject)
            except queue.Full:
                return  # its job reads the file
            self.arrived.set()

    def decode_next(self) -> bool:
        """Decode the next queued instance if the budget allows and pass it to :meth:`read_next`; False when
        none waited."""
        try:
            sop = self.waiting.get_nowait()
        except queue.Empty:
            return False
        with self.sessions() as session:
            row = session.execute(
                select(Instance.file_key, Instance.transfer_syntax_uid, Instance.analyzer, Instance.size_bytes)
                .where(Instance.sop_instance_uid == sop, Instance.state == InstanceState.ACCEPTED)
                .order_by(Instance.id.desc())
            ).first()  # fmt: skip
        if row is None or row.analyzer not in self.analyzers or row.file_key in self._taken:
            return True
        if self._bytes >= self.budget:
            return True
        if self.waiting.qsize() + self.in_flight() >= BURST:
            log.debug("instance %s not read ahead: a burst (%d more wait)", sop, self.waiting.qsize())
            return True
        with self._changed:  # the file's size until the decoded size is known
            self._pending[row.file_key] = 2 * row.size_bytes
            self._bytes += 2 * row.size_bytes
        path = str(self.files.local_path(row.file_key))
        if not UID(row.transfer_syntax_uid).is_compressed:  # nothing to decode but the file
            try:
                self._decoded(row.file_key, row.analyzer, pydicom.dcmread(path))
            except Exception as exc:  # noqa: BLE001 - the job reads it again and reports the reason in the SR
                log.debug("instance %s not read ahead: %s: %s", sop, type(exc).__name__, exc)
                self._settle(row.file_key, None)
            return True
        if self._pool is None:
            self.start()
        assert self._pool is not None
        future = self._pool.submit(decompressed, path)
        future.add_done_callback(lambda done: self._on_decompressed(row.file_key, row.analyzer, sop, done))
        return True

    def _on_decompressed(self, key: str, analyzer: str, sop: str, done: Future[Dataset]) -> None:
        """A decoding process has finished ``key`` (this runs in the pool's thread)."""
        if done.cancelled():
            self._settle(key, None)
            return
        error = done.exception()
        if error is None:
            self._decoded(key, analyzer, done.result())
            return
        if isinstance(error, BrokenProcessPool):
            log.warning("a decoding process died on instance %s; its job decodes it", sop)
            self._pool = None  # the next compressed instance starts new ones
        else:
            log.debug("instance %s not decoded ahead: %s: %s", sop, type(error).__name__, error)
        self._settle(key, None)

    def _decoded(self, key: str, analyzer: str, ds: Dataset) -> None:
        with self._changed:
            self._bytes += _held_bytes(ds) - self._pending.get(key, 0)
            self._pending[key] = _held_bytes(ds)
        self._decoded_queue.put((key, analyzer, ds))
        self.decoded.set()

    def read_next(self) -> bool:
        """Let the analyzer read the next decoded instance, then hold it for its job; False when none waited."""
        try:
            key, analyzer, ds = self._decoded_queue.get_nowait()
        except queue.Empty:
            return False
        try:
            self.analyzers[analyzer].read_ahead(ds)
        except Exception as exc:  # noqa: BLE001 - the job reads it again, and fails there with the reason
            log.warning("instance %s not read ahead: %s: %s", key, type(exc).__name__, exc)
            self._settle(key, None)
            return True
        self._settle(key, ds)
        return True

    def _settle(self, key: str, ds: Dataset | None) -> None:
        """``key`` is no longer in flight: held as ``ds``, or dropped (None); a job waiting for it wakes."""
        now = time.monotonic()
        with self._changed:
            self._bytes -= self._pending.pop(key, 0)
            for stale in [k for k, (_, _, at) in self._held.items() if now - at > HOLD_SECONDS]:
                self._bytes -= self._held.pop(stale)[1]
            if ds is not None:
                self._held[key] = (ds, _held_bytes(ds), now)
                self._bytes += _held_bytes(ds)
            self._changed.notify_all()

    def in_flight(self) -> int:
        """How many instances are being decoded or read now."""
        with self._changed:
            return len(self._pending)

    def take(self, key: str) -> Dataset | None:
        """The dataset of ``key`` read ahead, no longer held; None when it is not held. One still being decoded
        or read is waited for (at most :data:`WAIT_SECONDS`): that is sooner than reading it again."""
        with self._changed:
            self._changed.wait_for(lambda: key not in self._pending, WAIT_SECONDS)
            self._taken.append(key)
            held = self._held.pop(key, None)
            if held is None:
                return None
            self._bytes -= held[1]
            return held[0]

    def close(self) -> None:
        """End the decoding process; nothing is in flight any more."""
        with self._changed:
            self._bytes -= sum(self._pending.values())
            self._pending.clear()
            self._changed.notify_all()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
