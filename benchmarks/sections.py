"""Markdown renderers, one per section of results/latest.json."""

from __future__ import annotations

from benchmarks.common import renderer

AIM_PHANTOM_RADIOGRAPHS_PER_S = 2.0
AIM_ROOFLINE_FRACTION = 0.70
AIM_CASE_S = 1.0
AIM_RSS_MIB = 1536


def _vs_aim(value: float, aim: float, higher_is_better: bool = True) -> str:
    ratio = value / aim if higher_is_better else aim / value
    verdict = "met" if ratio >= 1 else f"missed by {abs(1 - ratio) * 100:.0f} %"
    return f"{ratio:.2f}× the aim ({verdict})"


@renderer("phantom")
def phantom(m: dict) -> list[str]:
    lines = [
        "## Phantom (`avn-node phantom`)",
        "",
        f"Measured {m['date']}: `make bench-phantom`.",
        "",
        "| figure | min | median | aim |",
        "|---|---|---|---|",
        f"| radiographs/s at 2048², {m['workers']} workers, default syntax mix, written to disk "
        f"| {m['radiographs_per_s_runs']['min']:.2f} | {m['radiographs_per_s']:.2f} | ≥ "
        f"{AIM_PHANTOM_RADIOGRAPHS_PER_S:.1f}: {_vs_aim(m['radiographs_per_s'], AIM_PHANTOM_RADIOGRAPHS_PER_S)} |",
    ]
    for name, s in m["stage_seconds"].items():
        lines.append(
            f"| s per radiograph: {name.replace('_', ' ')} (1 process) | {s['min']:.3f} | {s['median']:.3f} | |"
        )
    return lines


@renderer("ingest")
def ingest(m: dict) -> list[str]:
    return [
        "## Ingest (`make bench-ingest`)",
        "",
        f"Measured {m['date']}: {m['files']} uncompressed DX files, {m['megabytes']} MB, sent by dcmtk storescu over "
        "one association to each receiver on an empty folder. avn-node fsyncs each file and commits its row "
        "before answering (analysis off); storescp does neither.",
        "",
        "| figure | min | median | aim |",
        "|---|---|---|---|",
        f"| dcmtk storescp, MB/s | {m['storescp_mb_per_s']['min']} | {m['storescp_mb_per_s']['median']} | |",
        f"| avn-node, MB/s | {m['avn_node_mb_per_s']['min']} | {m['avn_node_mb_per_s']['median']} | |",
        f"| avn-node ÷ storescp | | {m['ratio_vs_storescp']:.2f} | ≥ 1.0: {_vs_aim(m['ratio_vs_storescp'], 1.0)} |",
    ]


@renderer("e2e")
def e2e(m: dict) -> list[str]:
    lines = [
        "## End-to-end latency (`make bench-node`)",
        "",
        f"Measured {m['date']}: AP + FL studies of {m['size']}² sent one after another to a node with "
        f"study_idle_seconds = {m['idle_seconds']}; time from the last C-STORE response to the SR's arrival at a "
        "storescp archive, minus the idle time.",
        "",
        "| input | studies | p50 s | p95 s | aim |",
        "|---|---|---|---|---|",
        f"| uncompressed | {m['n']} | {m['p50_s_after_idle']:.2f} | {m['p95_s_after_idle']:.2f} | p95 ≤ 2.0: "
        f"{_vs_aim(m['p95_s_after_idle'], 2.0, higher_is_better=False)} |",
    ]
    for s in m["by_syntax"].values():
        lines.append(f"| {s['name']} | {s['n']} | {s['p50_s_after_idle']:.2f} | {s['p95_s_after_idle']:.2f} | |")
    if "overhead_ratio" in m:
        lines += ["", f"Uncompressed p95 over the in-process analysis of the same studies (decode → CAM, median "
                  f"{m['analysis_s_median']:.3f} s): **{m['overhead_ratio']:.2f}×** (goal ≤ 1.6×, aim ≤ 1.3×)."]
    if "p95_ratio_worst_compressed" in m:
        worst = m["p95_ratio_worst_compressed"]
        lines += ["", f"Slowest compressed syntax's p95 over the uncompressed p95: **{worst:.2f}×** "
                  f"(goal ≤ 1.5×: {_vs_aim(worst, 1.5, higher_is_better=False)})."]
    lines += [
        "",
        "Where the time of an uncompressed study goes (medians over those studies). Each image is read as it "
        "arrives: decode → CAM ran before the study was complete (ahead is their sum, the denominator above), so "
        "after completion come the SR (report, store), sent at once (dispatch: from the SR's recording to its "
        "arrival) while the images (captures and summary) are drawn and stored behind it:",
        "",
        "| stage | min s | median s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {s['min']:.3f} | {s['median']:.3f} |" for name, s in m["stage_seconds"].items()]
    return lines


@renderer("concurrency")
def concurrency(m: dict) -> list[str]:
    return [
        "## Concurrent associations (`make bench-node`)",
        "",
        f"Measured {m['date']}: N simultaneous associations, each storing one 600² AP + FL study.",
        "",
        "| associations | failures | files/s |",
        "|---|---|---|",
        *(f"| {k} | {m[f'failures_{k}']} | {m[f'files_per_s_{k}']} |" for k in (1, 10, 50)),
    ]


@renderer("memory")
def memory(m: dict) -> list[str]:
    return [
        "## Memory of the serving node (`make bench-node`)",
        "",
        f"Measured {m['date']}.",
        "",
        "| figure | MiB | aim |",
        "|---|---|---|",
        f"| resident after start, models and web app loaded | {m['rss_idle_mib']} | |",
        f"| peak resident (VmHWM) after the latency and concurrency runs | {m['rss_peak_mib']} | ≤ {AIM_RSS_MIB}: "
        f"{_vs_aim(m['rss_peak_mib'], AIM_RSS_MIB, higher_is_better=False)} |",
    ] + ([f"| peak resident of its two decoding processes together (children, outside the figure above) | "
          f"{m['children_rss_peak_mib']} | |"] if "children_rss_peak_mib" in m else [])  # fmt: skip


@renderer("report")
def report(m: dict) -> list[str]:
    return [
        "## Result objects of one case (`make bench-inference`)",
        "",
        f"Measured {m['date']}: SR, two CAM captures and the summary image of an AP + FL case of 2048² radiographs.",
        "",
        "| figure | min | median |",
        "|---|---|---|",
        f"| s to build all result objects | {m['case_s_runs']['min']:.3f} | {m['case_s']:.3f} |",
    ]


@renderer("inference")
def inference(m: dict) -> list[str]:
    return [
        "## Inference (`make bench-inference`)",
        "",
        f"Measured {m['date']} with {m['threads']} torch threads, weights {m['model']}. FLOP = 2 × multiply-adds, "
        "counted by torch's FlopCounterMode.",
        "",
        "| figure | min | median | aim |",
        "|---|---|---|---|",
        *(
            f"| dense fp32 matmul {m['matmul_n']}² via {name}, GFLOP/s | {r['min']:.1f} | {r['median']:.1f} | "
            + ("(the limit: the faster path) |" if name == m["matmul_path"] else "|")
            for name, r in m["matmul_paths"].items()
        ),
        f"| classifier crops/s at {m['crop_size']}² (batch {m['batch']}; {m['crop_gflop']:.3f} GFLOP per crop) | "
        f"{m['crops_per_s_runs']['min']:.1f} | {m['crops_per_s']:.1f} | |",
        f"| classifier GFLOP/s ÷ matmul GFLOP/s | | {m['roofline_fraction']:.2f} | ≥ {AIM_ROOFLINE_FRACTION:.2f}: "
        f"{_vs_aim(m['roofline_fraction'], AIM_ROOFLINE_FRACTION)} |",
        f"| detector radiographs/s at {m['detector_size']}² ({m['detector_gflop']:.3f} GFLOP each) | "
        f"{m['detector_per_s_runs']['min']:.1f} | {m['detector_per_s']:.1f} | |",
        f"| radiographs/s end to end (decode, detect, 5-scale classify, CAM), uncompressed ~2048² | "
        f"{m['radiographs_per_s_runs']['min']:.2f} | {m['radiographs_per_s']:.2f} | |",
    ]


@renderer("analysis")
def analysis(m: dict) -> list[str]:
    lines = [
        "## Analysis of one case (`make bench-inference`)",
        "",
        f"Measured {m['date']}: an AP + FL case of uncompressed ~2048² radiographs, {m['threads']} torch threads.",
        "",
        "| figure | min | median | aim |",
        "|---|---|---|---|",
        f"| s per AP + FL case | {m['case_s_runs']['min']:.3f} | {m['case_s']:.3f} | ≤ {AIM_CASE_S:.1f}: "
        f"{_vs_aim(m['case_s'], AIM_CASE_S, higher_is_better=False)} |",
    ]
    for stage, s in m["stage_seconds"].items():
        lines.append(f"| of which {stage} | {s['min']:.3f} | {s['median']:.3f} | |")
    lines.append(
        f"| peak RSS with models loaded after the runs, MiB | | {m['rss_peak_mib']:.0f} | ≤ {AIM_RSS_MIB}: "
        f"{_vs_aim(m['rss_peak_mib'], AIM_RSS_MIB, higher_is_better=False)} |"
    )
    return lines


@renderer("scaleout")
def scaleout(m: dict) -> list[str]:
    lines = [
        "## Scale-out (`make bench-scaleout`)",
        "",
        f"Measured {m['date']}: {m['studies_per_round']} fresh AP + FL studies of {m['size']}² per round, sent "
        "back to back; from the first C-STORE to the last result sent to a storescp archive. Celery workers run "
        "`threads = 1` each, the local node `threads = 2`; all on this machine's cores.",
        "",
        "| pipeline | studies/min | s per round | s sending | median s per job |",
        "|---|---|---|---|---|",
    ]
    for label, r in m["rounds"].items():
        lines.append(f"| {label} | {r['studies_per_min']} | {r['seconds']} | {r['send_seconds']} | "
                     f"{r['job_seconds_median']} |")  # fmt: skip
    stages = m["rounds"]["celery, 1 worker"].get("stage_seconds_median", {})
    lines += ["", f"2 workers vs 1: {m['two_vs_one_worker']}×; 1 worker vs the local node: "
              f"{m['one_worker_vs_local']}×."]  # fmt: skip
    if stages:
        lines += ["", "Median seconds per job and stage (one worker):", "", "| " + " | ".join(stages) + " |",
                  "|" + "---|" * len(stages), "| " + " | ".join(map(str, stages.values())) + " |"]  # fmt: skip
    return lines
