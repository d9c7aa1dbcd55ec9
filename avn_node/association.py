"""Associations, built in one place: the SCP's AE (contexts, limits, calling AE and address policy) and the
SCU's (requested contexts, timeouts), and the process-wide pynetdicom settings applied once at start-up.

References: PS3.7 D.3.3 (association negotiation), PS3.8 9.3.4 (A-ASSOCIATE-RJ parameters), PS3.15 B.9
(BCP 195 TLS secure transport: TLS 1.2 or newer).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from avn_node.config import SecuritySettings

log = logging.getLogger("avn_node.association")

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
NO_REASON_GIVEN = 0x01

DEFAULT_TIMEOUT_SECONDS = 30


def any_length_uid(value: object) -> tuple[bool, str]:
    """pynetdicom's check of UI values in DIMSE messages, without its 64-character limit.

    With the limit a request whose Affected SOP Instance UID is too long aborts the association inside pynetdicom:
    the sender gets no status. Without it the C-STORE handler refuses the UID itself (0xC000, naming it).
    """
    return (True, "") if isinstance(value, str) and value else (False, "must be a non-empty str")


def configure_process(tmp_dir: Path) -> None:
    """Once at start-up: pynetdicom streams received datasets to files in ``tmp_dir`` (same filesystem as the
    store, so storing is a rename) instead of holding them in memory, and leaves bad UIDs to the handler."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp_dir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.VALIDATORS["UI"] = any_length_uid


def scp_ae(ae_title: str, security: SecuritySettings) -> AE:
    """The SCP: every storage SOP class in every transfer syntax, Verification, storage commitment reports,
    limits from ``[security]``."""
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    # an archive reporting storage commitment (N-EVENT-REPORT) proposes itself as the SCP of the Push Model
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    ae.maximum_associations = security.max_associations
    ae.maximum_pdu_size = security.max_pdu_bytes
    ae.require_calling_aet = list(security.allowed_calling_aets)
    if not security.allowed_calling_aets:
        log.warning("security.allowed_calling_aets is empty: any calling AE title may store")
    return ae


def scu_ae(
    calling_ae_title: str, contexts: Sequence[PresentationContext], timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> AE:
    """An SCU proposing ``contexts``; ACSE, DIMSE and network timeouts all ``timeout`` seconds."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = list(contexts)
    return ae


def peer(event: evt.Event) -> str:
    """``AET@address`` of the association's requestor."""
    return f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"


def reject_unlisted_address(security: SecuritySettings, event: evt.Event) -> bool:
    """EVT_REQUESTED: pynetdicom has no IP allow-list, so reject associations from other addresses; True if
    rejected."""
    allowed = security.allowed_peer_ips
    if allowed and event.assoc.requestor.address not in allowed:
        log.warning("rejected association from %s: address not in security.allowed_peer_ips", peer(event))
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, NO_REASON_GIVEN)
        return True
    return False


def server_tls(security: SecuritySettings) -> ssl.SSLContext | None:
    """The SCP's TLS context when ``tls_cert`` is set (then the port speaks TLS only), else None.

    With ``tls_ca`` set a peer must present a certificate signed by it.
    """
    if not security.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(security.tls_cert, security.tls_key or None)
    if security.tls_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(security.tls_ca)
    return context


def client_tls(security: SecuritySettings) -> ssl.SSLContext:
    """The SCU's TLS context towards a destination with ``tls = true``: the peer's certificate is checked
    against ``tls_ca`` (else the system's authorities) and its host name; ``tls_cert`` is presented if set."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=security.tls_ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if security.tls_cert:
        context.load_cert_chain(security.tls_cert, security.tls_key or None)
    return context
