"""Receive: the DICOM SCP (C-ECHO, C-STORE) — durable write, then the status (DESIGN §7)."""

RADIOGRAPH_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    }
)
"""The SOP classes the node analyses (within ``[routing]``); everything else is stored as ignored."""
