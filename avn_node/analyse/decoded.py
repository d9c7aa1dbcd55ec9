"""Decode compressed instances once, ahead of their job and outside the serving process.

The codecs (OpenJPEG, CharLS, libjpeg) hold Python's GIL while they decode: decoding a 2048² JPEG 2000 in the
node would stall its receivers, dispatchers and dashboard for a third of a second. So each accepted instance
whose transfer syntax is compressed is decoded in a spawned process while its study waits out its idle time
(the C-STORE handler itself never decodes, DESIGN §7), and comes back as the same dataset in Explicit VR Little
Endian (pydicom's ``decompress``); the analysis job takes it instead of reading the file. The classifier's crops
come from those full-resolution pixels as from any other.

Memory is bounded: while :data:`BUDGET_BYTES` of decoded datasets wait for their jobs, further instances are
not decoded ahead, and one whose job has not come within :data:`HOLD_SECONDS` is dropped. A job whose
instance is not held (not compressed, over budget, failed to decode, another process's with Celery) reads and
decodes its file as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.events import NodeEvent
from avn_node.parallel import spawn_pool
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Instance, InstanceState

log = logging.getLogger("avn_node.analyse")
BUDGET_BYTES = 256 * 2**20
BACKLOG = 1024  # instances waiting to be decoded; beyond it they are read by their job
HOLD_SECONDS = 600.0


def decompressed(path: str) -> Dataset:
    """The dataset of ``path`` with its pixel data decoded (runs in the decoding process)."""
    ds = pydicom.dcmread(path)
    ds.decompress(generate_instance_uid=False)
    return ds


def _ready() -> None:
    """The decoding process's first task: it has imported this module, pydicom and the codecs' plugins."""


class DecodedInstances:
    """Decoded datasets by file key, within :data:`BUDGET_BYTES`; :meth:`close` ends the decoding process."""

    def __init__(self, sessions: sessionmaker[Session], files: LocalFileStore, budget: int = BUDGET_BYTES) -> None:
        self.sessions, self.files, self.budget = sessions, files, budget
        self.waiting: queue.Queue[str] = queue.Queue(BACKLOG)
        self.arrived = threading.Event()  # wakes the decoding loop
        self._held: dict[str, tuple[Dataset, int, float]] = {}  # key → dataset, bytes, when decoded
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the decoding process (in the background: it is ready a moment later)."""
        self._pool = spawn_pool(1)
        self._pool.submit(_ready)

    def on_event(self, event: NodeEvent) -> None:
        """Subscriber: queue each accepted instance (by SOP Instance UID) for decoding."""
        if event.kind == "instance.accepted":
            try:
                self.waiting.put_nowait(event.subject)
            except queue.Full:
                return  # its job reads the file
            self.arrived.set()

    def decode_next(self) -> bool:
        """Decode the next queued instance if it is compressed and the budget allows; False when none waited."""
        try:
            sop = self.waiting.get_nowait()
        except queue.Empty:
            return False
        with self.sessions() as session:
            row = session.execute(
                select(Instance.file_key, Instance.transfer_syntax_uid)
                .where(Instance.sop_instance_uid == sop, Instance.state == InstanceState.ACCEPTED)
                .order_by(Instance.id.desc())
            ).first()  # fmt: skip
        if row is None or not UID(row.transfer_syntax_uid).is_compressed or self._bytes >= self.budget:
            return True
        if self._pool is None:
            self.start()
        assert self._pool is not None
        try:
            ds = self._pool.submit(decompressed, str(self.files.local_path(row.file_key))).result()
        except BrokenProcessPool:
            log.warning("the decoding process died on instance %s; its job decodes it", sop)
            self._pool = None
            return True
        except Exception as exc:  # noqa: BLE001 - the job reads it again and reports the reason in the SR
            log.debug("instance %s not decoded ahead: %s: %s", sop, type(exc).__name__, exc)
            return True
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (_, _, at) in self._held.items() if now - at > HOLD_SECONDS]:
                self._bytes -= self._held.pop(key)[1]
            self._held[row.file_key] = (ds, len(ds.PixelData), now)
            self._bytes += len(ds.PixelData)
        return True

    def take(self, key: str) -> Dataset | None:
        """The decoded dataset of ``key``, no longer held; None when it is not held."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is None:
                return None
            self._bytes -= held[1]
            return held[0]

    def close(self) -> None:
        """End the decoding process."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
