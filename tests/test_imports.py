"""The stages that never run a network stay free of torch (3 s and hundreds of MB at import)."""

import subprocess
import sys

TORCH_FREE = [
    "avn_node.findings",
    "avn_node.report.results",
    "avn_node.dispatch.sender",
    "avn_node.store.status",
    "avn_node.store.retention",
    "avn_node.group.scheduler",
    "avn_node.receive.scp",
    "avn_node.config",
]


def test_report_dispatch_store_group_and_receive_import_without_torch() -> None:
    imports = "; ".join(f"import {m}" for m in TORCH_FREE)
    probe = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
