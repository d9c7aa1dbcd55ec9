"""Process pools after torch has computed on several threads: the phantom generator and the training data
preparation finish instead of waiting forever in forked children (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 120  # the whole script takes seconds; a forked child stuck on torch's thread-pool lock never ends

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from avn_node.models.dataset import prepare
    from avn_node.phantom.generate import PhantomOptions, generate

    torch.set_num_threads(2)
    x = torch.rand(1, 1, 2000, 2000)
    F.interpolate(x, size=(1000, 1000), mode="bilinear", antialias=True)  # starts the intra-op thread pool
    torch.rand(1000, 1000) @ torch.rand(1000, 1000)

    out = Path(sys.argv[1])
    options = PhantomOptions(studies=2, seed=13, syntax_mix={"explicit": 1.0}, size_range=(400, 500))
    truth = generate(options, out / "one", workers=1)
    data = prepare(out / "one", det_size=128, crop_size=64, workers=2, progress=False)
    assert len(data.det_images) == len(truth.radiographs) > 0
    again = generate(options, out / "two", workers=2)
    assert [r.sop_instance_uid for r in again.radiographs] == [r.sop_instance_uid for r in truth.radiographs]
    print("finished")
    """
)


def test_process_pools_finish_after_torch_started_its_thread_pool(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,  # its pool workers die with it
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=DEADLINE_S)
        stuck = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stuck = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stray pool workers, if any
        except ProcessLookupError:
            pass
    assert not stuck, f"still running after {DEADLINE_S} s (a pool worker hangs); stderr:\n{stderr[-3000:]}"
    print(f"finished in {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip().endswith("finished")
