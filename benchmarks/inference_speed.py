"""Inference speed against the machine's dense fp32 matmul rate, case analysis time, and RSS.

Writes the ``inference``, ``analysis`` and ``report`` sections of ``benchmarks/results/latest.json`` and regenerates
``benchmarks/RESULTS.md``. Usage: ``python -m benchmarks.inference_speed [--weights DIR] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from torch.utils.flop_counter import FlopCounterMode

from avn_node.ground_truth import View
from avn_node.models import DEFAULT_WEIGHTS
from avn_node.models.detector import to_detector_input
from avn_node.models.inference import Analyzer
from avn_node.models.pixels import load_radiograph
from avn_node.models.transforms import letterbox, standardise
from avn_node.phantom.generate import PhantomOptions, generate
from avn_node.report.results import build_result_sets
from benchmarks.common import summary, write_results

MATMUL_N = 2048


def _timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(repeats: int) -> dict[str, list[float]]:
    """Dense fp32 n×n matmul rate (GFLOP/s, 2·n³ per product) through both of torch's CPU GEMM paths:
    MKL (``torch.mm``) and oneDNN (the same product as a 1×1 convolution). Which one reaches the vector
    units' peak depends on the CPU (MKL may take its AVX2 path on AMD where oneDNN uses AVX-512), so the
    faster is the limit the networks are compared with.
    """
    n = MATMUL_N
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = a.t().contiguous().reshape(1, n, 1, n).contiguous(memory_format=torch.channels_last)
    w = b.t().contiguous().reshape(n, n, 1, 1)
    with torch.inference_mode():
        return {
            "mkl_mm": [2 * n**3 / t / 1e9 for t in _timed(lambda: torch.mm(a, b), repeats)],
            "onednn_conv1x1": [2 * n**3 / t / 1e9 for t in _timed(lambda: torch.nn.functional.conv2d(x, w), repeats)],
        }


def gflop(model: torch.nn.Module, *args: object) -> float:
    """FLOP of one forward pass (FlopCounterMode counts 2 per multiply-add), in GFLOP."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*args)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20, help="crops per classifier pass (AP + FL case: 3–4 heads × 5)")
    args = parser.parse_args()

    analyzer = Analyzer(args.weights, threads=args.threads)
    info = analyzer.info
    data = Path(tempfile.mkdtemp(prefix="inference-bench-"))
    try:
        options = PhantomOptions(
            studies=4, seed=4242, syntax_mix={"explicit": 1.0}, shape_mix={"ap+fl": 1.0}, size_range=(2048, 2048)
        )
        truth = generate(options, data, workers=2)
        cases: dict[str, list[Path]] = {}
        for r in truth.radiographs:
            cases.setdefault(r.patient_id, []).append(data / r.file)
        case_files = [sorted(files) for files in cases.values() if len(files) == 2]
        radiographs = [f for files in case_files for f in files]

        gemm = matmul_gflops(args.repeats)
        crops = standardise(torch.rand(args.batch, 1, info.crop_size, info.crop_size)).contiguous(
            memory_format=torch.channels_last
        )
        crop_gflop = gflop(analyzer.classifier, crops) / args.batch
        with torch.inference_mode():
            crop_times = _timed(lambda: analyzer.classifier(crops), args.repeats)
        crops_per_s = [args.batch / t for t in crop_times]

        rad = load_radiograph(radiographs[0])
        det_input = [to_detector_input(letterbox(torch.from_numpy(rad.image)[None], info.detector_size)[0])]
        det_gflop = gflop(analyzer.detector, det_input)
        with torch.inference_mode():
            det_times = _timed(lambda: analyzer.detector(det_input), args.repeats)

        per_radiograph = _timed(lambda: [analyzer.analyse_radiograph(f) for f in radiographs], 2)
        case_times: list[float] = []
        stage_times: dict[str, list[float]] = {"decode": [], "analysis after decoding": []}
        for _ in range(args.repeats):
            for files in case_files:
                t0 = time.perf_counter()
                found = analyzer.analyse_case(files)
                case_times.append(time.perf_counter() - t0)
                assert {r.view for r in found.radiographs} <= {View.AP, View.FL, None}
                t1 = time.perf_counter()
                for f in files:
                    load_radiograph(f)
                decode = time.perf_counter() - t1
                stage_times["decode"].append(decode)
                stage_times["analysis after decoding"].append(case_times[-1] - decode)
        sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in case_files[0])}
        found = analyzer.analyse_case(list(sources.values()))
        report_times = _timed(lambda: build_result_sets(found, sources), args.repeats)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(data)

    gemm_paths = {name: summary(rates) for name, rates in gemm.items()}
    best_path = max(gemm_paths, key=lambda name: gemm_paths[name]["median"])
    gemm_median = gemm_paths[best_path]["median"]
    crops_median = summary(crops_per_s)["median"]
    inference = {
        "model": f"{info.version} ({info.sha256[:12]})",
        "threads": args.threads,
        "matmul_n": MATMUL_N,
        "matmul_gflops": gemm_median,
        "matmul_gflops_runs": gemm_paths[best_path],
        "matmul_path": best_path,
        "matmul_paths": gemm_paths,
        "crop_size": info.crop_size,
        "batch": args.batch,
        "crop_gflop": round(crop_gflop, 4),
        "crops_per_s": crops_median,
        "crops_per_s_runs": summary(crops_per_s),
        "achieved_gflops": round(crops_median * crop_gflop, 2),
        "roofline_fraction": round(crops_median * crop_gflop / gemm_median, 3),
        "detector_size": info.detector_size,
        "detector_gflop": round(det_gflop, 4),
        "detector_per_s": summary([1 / t for t in det_times])["median"],
        "detector_per_s_runs": summary([1 / t for t in det_times]),
        "radiographs_per_s": summary([len(radiographs) / t for t in per_radiograph])["median"],
        "radiographs_per_s_runs": summary([len(radiographs) / t for t in per_radiograph]),
    }
    analysis = {
        "threads": args.threads,
        "case_s": summary(case_times)["median"],
        "case_s_runs": summary(case_times),
        "stage_seconds": {k: summary(v) for k, v in stage_times.items()},
        "rss_peak_mib": round(rss_mib, 1),
    }
    report = {"case_s": summary(report_times)["median"], "case_s_runs": summary(report_times)}
    write_results("inference", inference)
    write_results("report", report)
    print(json.dumps({"inference": inference, "analysis": analysis}, indent=1))
    print(*write_results("analysis", analysis))


if __name__ == "__main__":
    main()
