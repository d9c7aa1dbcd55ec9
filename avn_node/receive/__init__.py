"""Receive: the DICOM SCP (C-ECHO, C-STORE) — durable write, then the status (DESIGN §7)."""
