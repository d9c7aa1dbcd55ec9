"""The audit trail (``security.audit_log``): one JSON line per security-relevant event, shaped after the IHE ATNA /
DICOM audit messages (PS3.15 A.5: EventID, EventActionCode, EventOutcomeIndicator, participants, objects).

It subscribes to the node's events. Each line is appended with the file opened and closed again, so a
logrotate that moves the file loses nothing and needs no signal. Patient names never appear; UIDs, AE titles,
addresses, the configuration path and, as the participant object of a stored instance, the Patient ID do.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from avn_node.events import NodeEvent

# (EventID code, meaning) — DCM codes of PS3.16 used by PS3.15 A.5.3
APPLICATION_ACTIVITY = ("110100", "Application Activity")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
STUDY_DELETED = ("110105", "DICOM Study Deleted")
USER_AUTHENTICATION = ("110114", "User Authentication")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8  # EventOutcomeIndicator
PERSON, PATIENT = 1, 1  # ParticipantObjectTypeCode, ParticipantObjectTypeCodeRole (PS3.15 A.5.2.5)

# node event kind → (EventID, EventActionCode, outcome)
AUDITED = {
    "node.started": (APPLICATION_ACTIVITY, "E", SUCCESS),
    "node.stopped": (APPLICATION_ACTIVITY, "E", SUCCESS),
    "association.accepted": (USER_AUTHENTICATION, "E", SUCCESS),
    "association.rejected": (USER_AUTHENTICATION, "E", MINOR_FAILURE),
    "instance.accepted": (INSTANCES_TRANSFERRED, "C", SUCCESS),
    "instance.ignored": (INSTANCES_TRANSFERRED, "C", SUCCESS),
    "instance.refused": (INSTANCES_TRANSFERRED, "C", MINOR_FAILURE),
    "delivery.done": (INSTANCES_TRANSFERRED, "R", SUCCESS),
    "delivery.dead": (INSTANCES_TRANSFERRED, "R", SERIOUS_FAILURE),
    "purge": (STUDY_DELETED, "D", SUCCESS),
    # dashboard actions, each naming its user in Detail
    "user.login": (USER_AUTHENTICATION, "E", SUCCESS),
    "user.login_failed": (USER_AUTHENTICATION, "E", MINOR_FAILURE),
    "delivery.retry": (APPLICATION_ACTIVITY, "E", SUCCESS),
    "label.stored": (APPLICATION_ACTIVITY, "C", SUCCESS),
    "result.retracted": (APPLICATION_ACTIVITY, "D", SUCCESS),
}


class AuditLog:
    """An event subscriber appending audit lines to ``path``."""

    def __init__(self, path: Path, node_ae_title: str) -> None:
        self.path = path
        self.node = node_ae_title
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: NodeEvent) -> None:
        if event.kind not in AUDITED:
            return
        (code, meaning), action, outcome = AUDITED[event.kind]
        entry = {
            "EventDateTime": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "EventID": {"code": code, "codingScheme": "DCM", "meaning": meaning},
            "EventActionCode": action,
            "EventOutcomeIndicator": outcome,
            "EventTypeText": event.kind,
            "AuditSource": self.node,
            "ParticipantObject": event.subject,
            "Detail": {k: v for k, v in event.data.items() if v not in ("", None) and k != "patient_id"},
        }
        if event.data.get("patient_id"):  # PS3.15 A.5.2.5: the patient as a participant object, by ID only
            entry["ParticipantObjectPatient"] = {
                "ParticipantObjectID": event.data["patient_id"],
                "ParticipantObjectTypeCode": PERSON,
                "ParticipantObjectTypeCodeRole": PATIENT,
                "ParticipantObjectIDTypeCode": {"code": "2", "codingScheme": "RFC-3881", "meaning": "Patient Number"},
            }
        if event.detail:
            entry["EventOutcomeDescription"] = event.detail
        line = json.dumps(entry, default=str) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
