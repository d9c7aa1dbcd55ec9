"""DICOMweb destinations (``[[destinations]] kind = "stow-rs"``): results sent by STOW-RS (PS3.18 10.5) and
deliveries in doubt settled by QIDO-RS (PS3.18 10.6), with dicomweb-client; the same outcomes as the DIMSE
functions of :mod:`avn_node.dispatch.sender`, so retries, back-off and dead-letter stay the dispatcher's."""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from avn_node.config import Destination

STORE_FAILED = 0x0110  # PS3.18 Table 10.5.3-1 "Processing failure", when a Failed SOP item gives no reason


def client(destination: Destination, timeout: float) -> DICOMwebClient:
    """A client for ``destination.url``: a bearer token or basic credentials, TLS checked against the system's
    or ``ca_bundle``'s certificate authorities (unless ``verify_tls`` is false); no retries of its own."""
    session = requests.Session()
    session.verify = destination.ca_bundle or destination.verify_tls
    headers = {"Authorization": f"Bearer {destination.token}"} if destination.token else None
    if destination.username:
        session.auth = (destination.username, destination.password)
    web = DICOMwebClient(destination.url, session=session, headers=headers, timeout=timeout)
    web.set_http_retry_params(retry=False)
    return web


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]


def send_files(destination: Destination, paths: list[Path], timeout: float) -> dict[Path, str]:
    """STOW-RS every file in one request; per file ``""`` when the response lists it as stored, else the reason
    (its Failed SOP item's Failure Reason, or why the request failed)."""
    outcome: dict[Path, str] = {}
    datasets: dict[str, tuple[Path, Dataset]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            datasets[str(ds.SOPInstanceUID)] = (path, ds)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file fails alone
            outcome[path] = f"cannot read the file: {type(exc).__name__}: {exc}"
    if not datasets:
        return outcome
    try:
        response = client(destination, timeout).store_instances([ds for _, ds in datasets.values()])
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: every file fails with the reason
        return {**outcome, **dict.fromkeys((p for p, _ in datasets.values()), f"not stored: {_reason(exc)}")}
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])}
    failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", STORE_FAILED))
              for item in response.get("FailedSOPSequence", [])}  # fmt: skip
    for uid, (path, _) in datasets.items():
        if uid in stored:
            outcome[path] = ""
        elif uid in failed:
            outcome[path] = f"failure reason 0x{failed[uid]:04X}"
        else:
            outcome[path] = "not in the STOW-RS response"
    return outcome


def held_by(destination: Destination, datasets: list[Dataset], timeout: float) -> set[str] | None:
    """SOP Instance UIDs of ``datasets`` the destination holds, by QIDO-RS per instance; None when it cannot be
    asked (no QIDO-RS, refused, unreachable)."""
    web = client(destination, timeout)
    found: set[str] = set()
    try:
        for ds in datasets:
            matches = web.search_for_instances(
                study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
                search_filters={"SOPInstanceUID": str(ds.SOPInstanceUID)},
            )  # fmt: skip
            if any(m.get("00080018", {}).get("Value", [None])[0] == ds.SOPInstanceUID for m in matches):
                found.add(str(ds.SOPInstanceUID))
    except Exception:  # noqa: BLE001 - the archive cannot be asked: the results are sent again
        return None
    return found
