"""The dashboard's web server inside ``avn-node serve``: uvicorn in a thread of its own."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from avn_node.config import Settings
from avn_node.store.files import LocalFileStore
from avn_node.web.app import create_app

log = logging.getLogger("avn_node.web")
START_TIMEOUT_S = 30


class DashboardError(RuntimeError):
    """The dashboard could not listen (the message names the address)."""


class Dashboard:
    """``[dashboard] host:port`` (port 0: any free one, see :attr:`port`), started and stopped with the node."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], files: LocalFileStore) -> None:
        self.host = settings.dashboard.host
        self.app = create_app(settings, sessions, files)
        config = uvicorn.Config(self.app, host=self.host, port=settings.dashboard.port, log_level="warning",
                                lifespan="off", access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DashboardError(f"the dashboard could not listen on {self.host}:{self.server.config.port}")
            time.sleep(0.05)
        log.info("dashboard on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.unsubscribe()
