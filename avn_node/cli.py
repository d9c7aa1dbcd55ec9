"""The ``avn-node`` command line (DESIGN §3). Heavy imports stay inside the commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from avn_node.models import DEFAULT_WEIGHTS

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="avn-node: AVN of the femoral head on hip radiographs. Not for clinical use.",
)

EXIT_WORK_FAILED = 1
EXIT_USAGE = 2

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML configuration (default: config/avn-node.toml).")
]


def _parse_mix(text: str, option: str) -> dict[str, float]:
    """``"a=1,b=2.5"`` → ``{"a": 1.0, "b": 2.5}``."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f'expected NAME=WEIGHT pairs separated by commas, got "{part}"', param_hint=option
            ) from None
    return mix


@app.callback()
def main() -> None:
    """avn-node: reads hip radiographs for avascular necrosis of the femoral head. Not for clinical use."""


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Folder to write DIR/<patient>/<study>/<view>.dcm and ground_truth.json.")],
    studies: Annotated[int, typer.Option(help="Number of patients (each gets one or two studies).")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes the same files.")] = 1,
    workers: Annotated[int, typer.Option(help="Worker processes (default: all cores).")] = 0,
    stage_mix: Annotated[
        str, typer.Option(help="Head stage weights, e.g. absence=1025,II=810,III=1271,IV=1983 (paper).")
    ] = "",
    bilateral_rate: Annotated[float, typer.Option(help="Share of AVN patients with both hips affected.")] = 0.6,
    syntax_mix: Annotated[
        str, typer.Option(help="Transfer syntax weights: explicit, j2k, jpegls, jpeg-lossless, rle.")
    ] = "",
    shape_mix: Annotated[
        str, typer.Option(help="Study shape weights: ap+fl (one study), ap|fl (two studies), ap, fl.")
    ] = "",
    fl_unilateral_rate: Annotated[float, typer.Option(help="Share of frog-leg laterals showing one hip.")] = 0.4,
    size_range: Annotated[
        tuple[int, int], typer.Option(help="Detector size range in pixels (pixel spacing adapts).")
    ] = (1500, 3000),
    style: Annotated[
        str,
        typer.Option(
            help="Rendering style weights: classic (the original look), varied (randomised anatomy, hardware and "
            "image chain), alt (a film-screen look written to differ from both), e.g. classic=1,varied=3."
        ),
    ] = "classic",
    preview: Annotated[
        bool, typer.Option(help="Also write preview.png: an AP and an FL per stage, boxes and labels.")
    ] = False,
) -> None:
    """Synthetic AP pelvis and frog-leg lateral hip studies as DICOM, with ground_truth.json (DESIGN §5)."""
    from rich.progress import Progress

    from avn_node.ground_truth import FicatStage
    from avn_node.phantom.generate import PhantomOptionError, PhantomOptions, generate
    from avn_node.phantom.lesions import StageMixError

    kwargs: dict[str, object] = {}
    if stage_mix:
        raw = _parse_mix(stage_mix, "--stage-mix")
        try:
            kwargs["stage_mix"] = {FicatStage(k): v for k, v in raw.items()}
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--stage-mix") from None
    if syntax_mix:
        kwargs["syntax_mix"] = _parse_mix(syntax_mix, "--syntax-mix")
    if shape_mix:
        kwargs["shape_mix"] = _parse_mix(shape_mix, "--shape-mix")
    kwargs["style_mix"] = _parse_mix(style, "--style") if "=" in style else {style: 1.0}
    try:
        options = PhantomOptions(
            studies=studies,
            seed=seed,
            bilateral_rate=bilateral_rate,
            fl_unilateral_rate=fl_unilateral_rate,
            size_range=size_range,
            **kwargs,
        )  # type: ignore[arg-type]
    except (PhantomOptionError, StageMixError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    n_workers = workers or os.cpu_count() or 1
    with Progress(transient=True) as bar:
        task = bar.add_task("phantom patients", total=studies)
        truth = generate(options, out, workers=n_workers, progress=lambda n: bar.advance(task, n))
    typer.echo(f"{len(truth.radiographs)} radiographs of {studies} patients in {out}")
    if preview:
        from avn_node.phantom.preview import contact_sheet

        typer.echo(f"preview: {contact_sheet(out, out / 'preview.png', truth)}")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Folder with DICOM files and ground_truth.json (phantom or site data).")],
    out: Annotated[Path, typer.Option(help="Weights folder to write (resumes from its checkpoints/).")],
    profile: Annotated[str, typer.Option(help="Training profile: cpu, cpu-finetune, gpu or smoke.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the split, initialisation and augmentation.")] = 1,
    version: Annotated[str, typer.Option(help="Model version string (default: the folder name).")] = "",
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    workers: Annotated[int, typer.Option(help="Processes decoding the radiographs.")] = 2,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Fine-tune from this weights folder (its detector and crop sizes replace the profile's)."),
    ] = None,
    freeze_trunk: Annotated[
        bool,
        typer.Option(help="With --init-from: train only the heads (detector backbone and classifier trunk frozen)."),
    ] = False,
) -> None:
    """Train the femoral-head detector and the AVN-net classifier, or fine-tune existing weights (DESIGN §3)."""
    import sys

    from avn_node.ground_truth import GROUND_TRUTH_FILE
    from avn_node.models.presets import PRESETS

    if profile not in PRESETS:
        raise typer.BadParameter(f"expected one of {', '.join(PRESETS)}, got {profile!r}", param_hint="--profile")
    if not (data / GROUND_TRUTH_FILE).is_file():
        raise typer.BadParameter(f"{data} has no {GROUND_TRUTH_FILE}", param_hint="--data")
    if freeze_trunk and init_from is None:
        raise typer.BadParameter("needs --init-from (a random trunk would stay random)", param_hint="--freeze-trunk")
    from avn_node.models.train import ResumeMismatchError
    from avn_node.models.train import train as run_training
    from avn_node.models.weights import WeightsError, load_weights

    preset = PRESETS[profile]
    if init_from is not None:
        try:
            info = load_weights(init_from)[2]
        except WeightsError as exc:
            typer.echo(f"Error: --init-from: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        sizes = {"detector_size": info.detector_size, "crop_size": info.crop_size}
        taken = [f"{k} {v}" for k, v in sizes.items() if getattr(preset, k) != v]
        typer.echo(
            f"fine-tuning {info.name} {info.version} (sha256 {info.sha256[:12]}…)"
            + (", heads only" if freeze_trunk else "")
            + (f"; {' and '.join(taken)} from the weights, not from profile {profile}" if taken else "")
        )
    command = "avn-node " + " ".join(sys.argv[1:])
    try:
        meta = run_training(
            data,
            out,
            preset,
            seed=seed,
            version=version,
            workers=workers,
            threads=threads,
            command=command,
            init_from=init_from,
            freeze_trunk=freeze_trunk,
        )
    except ResumeMismatchError as exc:
        typer.echo(f"Error: --out: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    det = meta["history"]["detector"][-1]["val"]
    cls = meta["history"]["classifier"][-1]["val"]
    typer.echo(f"weights in {out}: detector validation F1 {det:.3f}, classifier validation loss {cls:.3f}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Folder with DICOM files and ground_truth.json, never used in training.")],
    weights: Annotated[Path, typer.Option(help="Weights folder.")] = DEFAULT_WEIGHTS,
    out: Annotated[Path | None, typer.Option(help="Write metrics.json, report.md and plots here.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of patients for the 95 % CIs.")] = 10_000,
    tta: Annotated[bool, typer.Option(help="Average each head over the five paper scales.")] = True,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    truth_boxes: Annotated[
        bool,
        typer.Option(help="Classify the ground-truth boxes instead of detected heads (detection not scored)."),
    ] = False,
    refuse: Annotated[
        bool,
        typer.Option(help="Score heads beyond the weights' out-of-distribution threshold as refused (p = 0.5)."),
    ] = True,
) -> None:
    """Paper-style metrics with bootstrap 95 % CIs (DESIGN §3)."""
    import json

    from avn_node.ground_truth import GROUND_TRUTH_FILE

    if not (data / GROUND_TRUTH_FILE).is_file():
        raise typer.BadParameter(f"{data} has no {GROUND_TRUTH_FILE}", param_hint="--data")
    if bootstrap < 0:
        raise typer.BadParameter(f"must be ≥ 0, got {bootstrap}", param_hint="--bootstrap")
    from avn_node.models.evaluate import evaluate as run_evaluation
    from avn_node.models.weights import WeightsError

    try:
        metrics = run_evaluation(
            data,
            weights,
            out,
            bootstrap,
            threads=threads,
            tta=tta,
            progress=not json_output,
            truth_boxes=truth_boxes,
            refuse_out_of_distribution=refuse,
        )
    except WeightsError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if json_output:
        typer.echo(json.dumps(metrics))
        return
    missed = [k for k, t in metrics["targets"].items() if not t["met"]]
    det = metrics["detection"]
    typer.echo(
        f"{metrics['n_radiographs']} radiographs, {metrics['n_heads']} heads; "
        + ("truth boxes, detection not scored" if "skipped" in det else f"detection F1@0.5 {det['f1_iou50']:.3f}")
        + f", presence AUC {metrics['presence']['auc']}, "
        f"targets missed: {', '.join(missed) or 'none'}" + (f"; report in {out}" if out else "")
    )


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Folder for the result objects, one sub-folder per study.")],
    weights: Annotated[Path, typer.Option(help="Weights folder.")] = DEFAULT_WEIGHTS,
    summary_image: Annotated[bool, typer.Option(help="Also write the case summary image.")] = True,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    refuse_out_of_distribution: Annotated[
        bool, typer.Option(help="Refuse heads unlike the training data: AVN not evaluated, no stage.")
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Offline: the node's analysis and result objects written as files, no network (DESIGN §3).

    ``[routing]`` and ``pipeline.case_window_hours`` come from the configuration, as in ``serve``; weights,
    threads, refusal and the summary image from the options.
    """
    from datetime import timedelta

    from rich.console import Console
    from rich.table import Table

    from avn_node.analyse.analyzers import analyzer_kinds
    from avn_node.models.weights import WeightsError
    from avn_node.offline import analyze as run_offline

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}", param_hint="PATHS")
    settings = _settings(config)
    settings = settings.model_copy(update={
        "models": settings.models.model_copy(update={
            "dir": weights.absolute(), "threads": threads, "refuse_out_of_distribution": refuse_out_of_distribution,
        }),
        "reporting": settings.reporting.model_copy(update={"summary_image": summary_image}),
    })  # fmt: skip
    try:
        run = run_offline(paths, out, analyzer_kinds(settings), timedelta(hours=settings.pipeline.case_window_hours))
    except WeightsError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    table = Table("patient case", "hip", "stage", "AVN probability", "decided by", title="Hips")
    for i, case in enumerate(run.cases, 1):
        for hip in case.hips:
            view = next(r.view for r in case.radiographs if r.sop_instance_uid == hip.decided_by)
            stage, p = ("not evaluated", "-")
            if hip.evaluated:
                stage, p = hip.stage.value, f"{hip.head.presence_probability:.0%}"
            table.add_row(str(i), hip.side.value, stage, p, str(view.value))
    console = Console()
    console.print(table)
    for path, reason in run.skipped.items():
        console.print(f"skipped {path}: {reason}")
    unread = [r for case in run.cases for r in case.radiographs if r.error]
    for r in unread:
        console.print(f"could not analyse {r.sop_instance_uid}: {r.error}")
    console.print(f"{len(run.written)} result objects in {out}")
    if not run.cases:
        typer.echo("Error: no input selected by an analyzer (a CR or DX radiograph within [routing])", err=True)
        raise typer.Exit(EXIT_WORK_FAILED)


@app.command("fit-ood")
def fit_ood(
    data: Annotated[
        Path,
        typer.Option(
            help="The folder the weights were trained on (ground_truth.json); the training/validation split is "
            "rebuilt from model.json's preset and seed."
        ),
    ],
    weights: Annotated[Path, typer.Option(help="Weights folder that gets ood.safetensors.")] = DEFAULT_WEIGHTS,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    workers: Annotated[int, typer.Option(help="Processes decoding the radiographs.")] = 2,
) -> None:
    """Fit the out-of-distribution reference of existing weights without retraining (training does it too)."""
    from avn_node.ground_truth import GROUND_TRUTH_FILE

    if not (data / GROUND_TRUTH_FILE).is_file():
        raise typer.BadParameter(f"{data} has no {GROUND_TRUTH_FILE}", param_hint="--data")
    from avn_node.models.ood import OodDataError, refit
    from avn_node.models.weights import WeightsError

    try:
        entry = refit(weights, data, workers=workers, threads=threads)
    except (WeightsError, OodDataError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(
        f"out-of-distribution reference in {weights}: threshold {entry['threshold']:.3f} at a "
        f"{100 * entry['false_flag_rate']:g} % false-flag rate, {entry['validation_heads']} validation heads"
        + (f"; note: {entry['note']}" if "note" in entry else "")
    )


def _settings(config: Path | None):  # noqa: ANN202 - avoids importing pydantic for other commands
    from avn_node.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _database(settings):  # noqa: ANN001, ANN202
    """The existing database of ``settings``, or exit 1 saying why there is none."""
    from avn_node.store.database import DatabaseNotReadyError, connect

    try:
        return connect(settings.database.url)
    except DatabaseNotReadyError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_WORK_FAILED) from None


def _peer(text: str, option: str, calling_aet: str):  # noqa: ANN202
    """``AET@HOST:PORT`` and our AE title → a destination; a usage error (exit 2) names what is wrong."""
    from pydantic import ValidationError

    from avn_node.config import Destination

    aet, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not (aet and at and host and colon and port.isdigit()):
        raise typer.BadParameter(f"expected AET@HOST:PORT, got {text!r}", param_hint=option)
    try:
        return Destination(name=text, ae_title=aet, host=host, port=int(port), calling_ae_title=calling_aet)
    except ValidationError as exc:
        error = exc.errors()[0]
        hint = "--calling-aet" if error["loc"][0] == "calling_ae_title" else option
        raise typer.BadParameter(error["msg"].removeprefix("Value error, "), param_hint=hint) from None


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the node: SCP, grouping, analysis, reporting and dispatch in one process (DESIGN §3)."""
    import logging
    import signal
    import ssl
    import threading

    from avn_node.logs import configure_logging
    from avn_node.metrics import share_between_processes
    from avn_node.models.weights import WeightsError

    settings = _settings(config)
    if settings.queue.backend == "celery":  # the jobs run in the workers: their histograms reach our /metrics
        share_between_processes(settings.node.data_dir)
    from avn_node.serve import serve as run_node
    from avn_node.web.server import DashboardError

    configure_logging(settings.logging.level, settings.logging.json_logs)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop accepting, finish the running job, exit
        signal.signal(sig, lambda *_: stop.set())
    # logrotate's postrotate may send SIGHUP: the audit log is opened per line, so there is nothing to reopen,
    # and the signal must not end the node (its default action)
    signal.signal(signal.SIGHUP, lambda *_: logging.getLogger("avn_node").info(
        "SIGHUP: nothing to reopen (the audit log is opened per line; logs go to stdout)"))  # fmt: skip
    try:
        run_node(settings, stop)
    except WeightsError as exc:
        typer.echo(f'Error: key "models.dir": {exc}', err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except ssl.SSLError as exc:
        typer.echo(f'Error: key "security.tls_cert" / "tls_key" / "tls_ca": cannot load: {exc}', err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except DashboardError as exc:
        typer.echo(f'Error: key "dashboard.host" / "dashboard.port": {exc} (in use, or not an address here)', err=True)
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def worker(
    config: ConfigOption = None,
    name: Annotated[str | None, typer.Option(help="This worker's name on its host, stable across restarts (e.g. "
                                                  "the systemd instance); default: its process id.")] = None,
) -> None:
    """A Celery worker for the analysis, report and dispatch stages ([queue] backend = "celery"; DESIGN §3)."""
    from avn_node.logs import configure_logging
    from avn_node.metrics import share_between_processes
    from avn_node.models.weights import WeightsError
    from avn_node.store.database import DatabaseNotReadyError

    settings = _settings(config)
    if settings.queue.backend != "celery":
        typer.echo('Error: key "queue.backend": a worker needs backend = "celery" (with "local", serve analyses '
                   "in its own process)", err=True)  # fmt: skip
        raise typer.Exit(EXIT_USAGE)
    share_between_processes(settings.node.data_dir)
    from avn_node.serve import CeleryWorker

    configure_logging(settings.logging.level, settings.logging.json_logs)
    try:
        code = CeleryWorker(settings, name).run()
    except WeightsError as exc:
        typer.echo(f'Error: key "models.dir": {exc}', err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except DatabaseNotReadyError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_WORK_FAILED) from None
    raise typer.Exit(code)


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="AET@HOST:PORT")],
    calling_aet: Annotated[str, typer.Option(help="Our AE title.")] = "AVN_NODE",
) -> None:
    """C-ECHO a DICOM peer."""
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification

    from avn_node.association import scu_ae

    destination = _peer(peer, "PEER", calling_aet)
    ae = scu_ae(destination.calling_ae_title, [build_context(Verification)])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        typer.echo(f"Error: no association with {peer}", err=True)
        raise typer.Exit(EXIT_WORK_FAILED)
    status = assoc.send_c_echo()
    assoc.release()
    if getattr(status, "Status", None) != 0:
        typer.echo(f"Error: C-ECHO to {peer} failed", err=True)
        raise typer.Exit(EXIT_WORK_FAILED)
    typer.echo(f"C-ECHO {peer}: success")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    to: Annotated[str, typer.Option(help="AET@HOST:PORT")],
    calling_aet: Annotated[str, typer.Option(help="Our AE title.")] = "AVN_NODE",
) -> None:
    """C-STORE files to a DICOM peer."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from avn_node.dispatch.sender import send_files
    from avn_node.store.files import files_under

    destination = _peer(to, "--to", calling_aet)
    files = []
    for path in files_under(paths):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            files.append(path)
        except (InvalidDicomError, OSError):
            typer.echo(f"skipped {path}: not a DICOM file")
    if not files:
        raise typer.BadParameter("no DICOM files found", param_hint="PATHS")
    outcome = send_files(destination, files)
    failed = {p: e for p, e in outcome.items() if e}
    for path, error in failed.items():
        typer.echo(f"failed {path}: {error}", err=True)
    typer.echo(f"sent {len(files) - len(failed)} of {len(files)} files to {to}")
    if failed:
        raise typer.Exit(EXIT_WORK_FAILED)


@app.command()
def status(
    config: ConfigOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Counts per state, queue depth, recent studies, failures and stored results (the dashboard's overview)."""
    import json

    from avn_node.store.status import node_status
    from avn_node.web.queries import overview

    settings = _settings(config)
    with _database(settings)() as session:
        report = node_status(session, settings.node.data_dir)
        summary = overview(session)
    if json_output:
        extra = summary.model_dump(mode="json", include={"queue", "recent"})
        typer.echo(json.dumps({**report, **extra}))
        return
    _print_status(report, summary)


def _print_status(report: dict, summary) -> None:  # noqa: ANN001 - avn_node.web.schemas.Overview
    from rich.console import Console
    from rich.table import Table

    from avn_node.web.queries import short_uid

    console = Console()
    counts = Table("table", "states", title="Counts", title_justify="left")
    for section in ("instances", "studies", "cases", "jobs", "deliveries"):
        counts.add_row(section, ", ".join(f"{k} {v}" for k, v in report[section].items()) or "none")
    console.print(counts)
    queue = Table(*summary.queue.model_dump(), title="Queue depth", title_justify="left")
    queue.add_row(*(str(v) for v in summary.queue.model_dump().values()))
    console.print(queue)
    studies = Table("study", "patient", "state", "images", "case", "version", "hips", title="Recent studies",
                    title_justify="left")  # fmt: skip
    for s in summary.recent:
        hips = ", ".join(f"{h.side} {h.stage or 'not evaluated'}" for h in s.hips) or "–"
        studies.add_row(short_uid(s.study_instance_uid), s.patient_id, s.state, str(s.instances),
                        s.case_state or "", str(s.version or ""), hips + (" (OOD)" if s.out_of_distribution else ""))
    console.print(studies)
    for failure in report["failures"]:
        console.print(f"[red]failure[/red] {failure}", highlight=False)
    for result in report["results"]:
        console.print(f"result {result['kind']} v{result['version']} study {short_uid(result['study'])}: "
                      f"{result['path']}", highlight=False)  # fmt: skip


@app.command()
def reanalyse(
    study_uids: Annotated[list[str], typer.Argument(help="Study Instance UIDs whose case is read again.")],
    config: ConfigOption = None,
) -> None:
    """Queue a new version of each study's case with the configured weights; the running node picks it up.

    Results already made stay as they are; the new SR names its predecessor. Exit 1 if any study was not queued.
    """
    from avn_node.group.scheduler import reanalyse_studies

    settings = _settings(config)
    with _database(settings)() as session:
        outcome = reanalyse_studies(session, study_uids)
        session.commit()
    for uid, (_, what) in outcome.items():
        typer.echo(f"{uid}: {what}")
    if not all(queued for queued, _ in outcome.values()):
        raise typer.Exit(EXIT_WORK_FAILED)


users_app = typer.Typer(help="Dashboard accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option(help="admin | radiologist | viewer")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="Asked for when not given (at least 8 characters).")],  # fmt: skip
    config: ConfigOption = None,
) -> None:
    """Add a dashboard user; prints their API token once (for ``Authorization: Bearer``)."""
    from avn_node.store.models import Role
    from avn_node.web.auth import UserError, add_user

    if role not in {r.value for r in Role}:
        raise typer.BadParameter(f'"{role}" is not one of admin, radiologist, viewer', param_hint="--role")
    settings = _settings(config)
    try:
        with _database(settings)() as session:
            token = add_user(session, name, Role(role), password)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"user {name} ({role}) added; API token (shown once): {token}")


labels_app = typer.Typer(help="Reviewers' labels from the dashboard's review page.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("export")
def labels_export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the DICOM files and ground_truth.json.")],
    deidentify: Annotated[bool, typer.Option("--deidentify", help="De-identify the files (dicognito).")] = False,
    key: Annotated[Path | None, typer.Option(help="With --deidentify: the CSV that maps new IDs and UIDs back "
                                                  "(default: OUT-key.csv beside OUT, never inside it).")] = None,
    config: ConfigOption = None,
) -> None:
    """The newest label of every reviewed radiograph as a training set (DESIGN §5) for ``train --init-from`` and
    ``evaluate``, with agreement.json / agreement.md (model against reviewers)."""
    from avn_node.labels import export
    from avn_node.store.files import LocalFileStore

    settings = _settings(config)
    key = key or out.with_name(f"{out.name}-key.csv")
    if deidentify and key.resolve().is_relative_to(out.resolve()):
        raise typer.BadParameter("the key must lie outside the exported folder", param_hint="--key")
    with _database(settings)() as session:
        summary = export(session, LocalFileStore(settings.node.data_dir), out, deidentify, key if deidentify else None)
    typer.echo(f"{summary.radiographs} radiographs, {summary.heads} heads written to {out}"
               + (f"; key: {key}" if deidentify and summary.radiographs else "")
               + (f"; {summary.missing} labelled files are gone (purged) and were left out" if summary.missing else ""))


deliveries_app = typer.Typer(help="Deliveries of results to destinations.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.command("retry")
def deliveries_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Delivery IDs (see `avn-node status`).")] = None,
    all_dead: Annotated[bool, typer.Option("--all", help="Every dead-lettered delivery.")] = False,
    config: ConfigOption = None,
) -> None:
    """Re-queue failed deliveries; the running node sends them at once."""
    from avn_node.dispatch.sender import retry_deliveries

    if bool(ids) == all_dead:
        raise typer.BadParameter("give delivery IDs or --all, not both or neither", param_hint="--all")
    settings = _settings(config)
    with _database(settings)() as session:
        n = retry_deliveries(session, ids or None)
    typer.echo(f"{n} deliveries re-queued")


@app.command()
def purge(
    older_than: Annotated[float | None, typer.Option(help="Days (default: [storage] retention_days).")] = None,
    config: ConfigOption = None,
) -> None:
    """Delete received images and results older than the retention; rows stay as an audit trace."""
    from avn_node.store.files import LocalFileStore
    from avn_node.store.retention import purge_older_than

    settings = _settings(config)
    days = settings.storage.retention_days if older_than is None else older_than
    if days <= 0:
        typer.echo("retention is 0 (keep forever): nothing purged")
        return
    with _database(settings)() as session:
        deleted, failed = purge_older_than(session, LocalFileStore(settings.node.data_dir), days)
    typer.echo(f"{deleted} files deleted")
    if failed:
        typer.echo(f"Error: {failed} files could not be deleted; their rows are unchanged (see the log)", err=True)
        raise typer.Exit(EXIT_WORK_FAILED)


@app.command()
def backup(
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) folder for the backup.")],
    files: Annotated[bool, typer.Option("--files/--no-files", help="Copy the stored files too.")] = True,
    config: ConfigOption = None,
) -> None:
    """A consistent copy of the database (taken while the node runs), the files it names, and their manifest."""
    from avn_node.store.backup import BackupError
    from avn_node.store.backup import backup as make_backup

    settings = _settings(config)
    try:
        entries = make_backup(settings.database.url, settings.node.data_dir, out, files)
    except BackupError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_WORK_FAILED) from None
    size = sum(e.size for e in entries) / 2**20
    typer.echo(f"backup in {out}: database and {len(entries)} files ({size:.1f} MB){'' if files else ' listed'}")


@app.command()
def restore(
    source: Annotated[Path, typer.Option("--from", help="A folder written by `avn-node backup`.")],
    files_from: Annotated[
        Path | None, typer.Option(help="Where the files are, for a backup made with --no-files.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Put a backup in place of a fresh node: the configured database must not exist yet; files are checked
    against the manifest first. Then start the node (`avn-node serve`) on this configuration."""
    from avn_node.store.backup import BackupError
    from avn_node.store.backup import restore as restore_backup

    settings = _settings(config)
    try:
        entries = restore_backup(source, settings.database.url, settings.node.data_dir, files_from)
    except BackupError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_WORK_FAILED) from None
    typer.echo(f"restored the database and {len(entries)} files into {settings.node.data_dir}")


db_app = typer.Typer(help="The node's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create the database or bring it to this version's schema (``serve`` does this at start too)."""
    from avn_node.store.database import migrate

    settings = _settings(config)
    migrate(settings.database.url)
    typer.echo(f"database at the newest schema: {settings.database.url}")
