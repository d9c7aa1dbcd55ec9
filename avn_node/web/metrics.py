"""``/metrics`` in the Prometheus text format.

Everything that describes state is counted in the database at scrape time, so it is right whichever process did
the work (serve, any Celery worker): instances by state, bytes, refusals by DICOM status, rejected
associations, studies, cases, jobs and deliveries by state and destination, job durations, readings and
refused heads. Durations of the job stages and the associations accepted are counted by the processes that saw
them (:mod:`avn_node.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from avn_node import metrics as process_metrics
from avn_node.events import NodeEvent
from avn_node.store.models import Case, Delivery, Event, Instance, Job, JobState, Reading, Study

JOB_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class DatabaseCollector(Collector):
    """Gauges and counters read from the database when Prometheus scrapes."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield from self._states(session)
            yield from self._received(session)
            yield from self._jobs(session)
            yield from self._readings(session)

    @staticmethod
    def _states(session: Session) -> Iterator[Metric]:
        for name, column, what in (
            ("avn_studies", Study.state, "Studies by state"),
            ("avn_cases", Case.state, "Cases by state"),
            ("avn_jobs", Job.state, "Analysis jobs by state (queued and running: the queue depth)"),
        ):
            gauge = GaugeMetricFamily(name, what, labels=["state"])
            for state, n in session.execute(select(column, func.count()).group_by(column)):
                gauge.add_metric([str(state)], n)
            yield gauge
        deliveries = GaugeMetricFamily("avn_deliveries", "Result deliveries by destination and state",
                                       labels=["destination", "state"])  # fmt: skip
        query = select(Delivery.destination, Delivery.state, func.count()).group_by(
            Delivery.destination, Delivery.state
        )
        for destination, state, n in session.execute(query):
            deliveries.add_metric([destination, str(state)], n)
        yield deliveries

    @staticmethod
    def _received(session: Session) -> Iterator[Metric]:
        instances = CounterMetricFamily("avn_instances_received", "Instances stored, by state", labels=["state"])
        size = CounterMetricFamily("avn_received_bytes", "Bytes of the instances stored")
        total = 0
        for state, n, nbytes in session.execute(
            select(Instance.state, func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)).group_by(
                Instance.state
            )
        ):
            instances.add_metric([str(state)], n)
            total += int(nbytes)
        size.add_metric([], total)
        yield instances
        yield size
        refused = CounterMetricFamily("avn_instances_refused", "C-STOREs refused, by the DICOM status answered",
                                      labels=["status"])  # fmt: skip
        for data, n in session.execute(
            select(Event.data, func.count()).where(Event.kind == "instance.refused").group_by(Event.data)
        ):
            code = (data or {}).get("status")
            refused.add_metric([f"0x{code:04X}" if isinstance(code, int) else "unknown"], n)
        yield refused
        rejected = session.scalar(select(func.count()).where(Event.kind == "association.rejected")) or 0
        associations = CounterMetricFamily("avn_associations_rejected", "Associations rejected (any process)")
        associations.add_metric([], rejected)
        yield associations

    @staticmethod
    def _jobs(session: Session) -> Iterator[Metric]:
        done = select(Job.seconds).where(Job.state == JobState.DONE, Job.seconds.is_not(None))
        seconds = [float(s) for s in session.scalars(done)]
        buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in JOB_SECONDS_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        histogram = HistogramMetricFamily("avn_job_seconds", "Duration of finished analysis jobs (read to stored)")
        histogram.add_metric([], buckets, sum(seconds))
        yield histogram

    @staticmethod
    def _readings(session: Session) -> Iterator[Metric]:
        readings = CounterMetricFamily("avn_readings", "Radiographs read, by model version and whether refused",
                                       labels=["model_version", "out_of_distribution"])  # fmt: skip
        query = select(Reading.model_version, Reading.out_of_distribution, func.count()).group_by(
            Reading.model_version, Reading.out_of_distribution
        )
        for version, flagged, n in session.execute(query):
            readings.add_metric([version, str(bool(flagged)).lower()], n)
        yield readings
        heads = CounterMetricFamily("avn_heads_refused", "Femoral heads refused as out of distribution",
                                    labels=["model_version"])  # fmt: skip
        query = select(Reading.model_version, func.sum(Reading.refused_heads)).group_by(Reading.model_version)
        for version, n in session.execute(query):
            heads.add_metric([version], int(n or 0))
        yield heads


def registry(sessions: sessionmaker[Session]) -> tuple[CollectorRegistry, Counter]:
    """A registry with the database collector, the stage histograms (:mod:`avn_node.metrics`) and this process's
    accepted-associations counter (shared between processes like the histograms, in multiprocess mode)."""
    reg = CollectorRegistry()
    reg.register(DatabaseCollector(sessions))
    accepted = Counter("avn_associations_accepted", "Associations accepted", registry=None)
    if not process_metrics.multiprocess():
        reg.register(accepted)
    process_metrics.add_to(reg)
    return reg, accepted


def counting_associations(counter: Counter):  # noqa: ANN201 - an events subscriber
    """An events subscriber that counts accepted associations."""

    def on_event(event: NodeEvent) -> None:
        if event.kind == "association.accepted":
            counter.inc()

    return on_event
