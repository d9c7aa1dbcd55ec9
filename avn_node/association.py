"""Associations, built in one place: the SCP's AE (contexts, limits, calling AE and address policy) and the
SCU's (requested contexts, timeouts), and the process-wide pynetdicom settings applied once at start-up.

References: PS3.7 D.3.3 (association negotiation), PS3.8 9.3.4 (A-ASSOCIATE-RJ parameters).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from avn_node.config import SecuritySettings

log = logging.getLogger("avn_node.association")

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
NO_REASON_GIVEN = 0x01

DEFAULT_TIMEOUT_SECONDS = 30


def configure_process(tmp_dir: Path) -> None:
    """Once at start-up: pynetdicom streams received datasets to files in ``tmp_dir`` (same filesystem as the
    store, so storing is a rename) instead of holding them in memory."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp_dir)
    _config.STORE_RECV_CHUNKED_DATASET = True


def scp_ae(ae_title: str, security: SecuritySettings) -> AE:
    """The SCP: every storage SOP class in every transfer syntax, Verification, limits from ``[security]``."""
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
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
