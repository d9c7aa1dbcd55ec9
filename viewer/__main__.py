"""`python -m viewer` (`make viewer`): start the stack, print where to look and how to send, run until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from avn_node.models import DEFAULT_WEIGHTS
from viewer.stack import ViewerStack, ohif_dist

ROOT = Path(__file__).resolve().parents[1]


def main(
    data: Annotated[Path, typer.Option(help="Orthanc and node data, kept.")] = ROOT / "var/viewer",
    weights: Annotated[Path, typer.Option(help="Model folder.")] = ROOT / DEFAULT_WEIGHTS,
    port: Annotated[int, typer.Option(help="Viewer (HTTP) port.")] = 3000,
    orthanc_port: Annotated[int, typer.Option(help="Orthanc's DICOM port.")] = 4242,
    orthanc_http_port: Annotated[int, typer.Option(help="Orthanc's HTTP port.")] = 8042,
    node_port: Annotated[int, typer.Option(help="The node's DICOM port.")] = 11112,
) -> None:
    """Orthanc (DICOMweb), the node and OHIF on 127.0.0.1; the PACS forwards radiographs to the node."""
    dist = ohif_dist(ROOT / "build")
    stack = ViewerStack(data, dist, weights, port, orthanc_http_port, orthanc_port, node_port)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with stack:
        typer.echo(
            f"OHIF:    {stack.url}\n"
            f"PACS:    {stack.pacs} (Orthanc, REST {stack.orthanc_url}); forwards CR/DX series to the node\n"
            f"node:    AVN_NODE@127.0.0.1:{node_port}, results go back to the PACS; logs in {data}\n"
            "Send a study:  .venv/bin/avn-node phantom --out /tmp/hips --studies 2 --shape-mix ap+fl=1\n"
            f"               .venv/bin/avn-node send /tmp/hips --to {stack.pacs}\n"
            "Ctrl-C stops all three."
        )
        stop.wait()


if __name__ == "__main__":
    typer.run(main)
