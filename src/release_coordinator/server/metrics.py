"""``GET /metrics`` in the Prometheus text format (prometheus-client), for ``serve``.

:class:`ServiceMetrics` holds one :class:`~prometheus_client.CollectorRegistry` per app (never
the process's default registry: several apps in one process do not share their numbers) with

- counters and histograms fed where things happen: every HTTP request (through
  :class:`~release_coordinator.server.access_log.AccessLog`'s measurement, by method, route
  template and status: the child protocol's polls and results among them), every call of the
  Coordinator to a task service (through :class:`MeteredTransport`, which wraps
  ``coordinator.transport``: time by service, action and outcome), and every retry of one;
- gauges read from the stores at each scrape (:class:`StoreCollector`): releases by state,
  tasks of unfinished releases by state, task-service health, and per active or paused
  rollout its children by status, per stage and status, and per ``WaitForSignal`` stage its
  barrier (children waiting, ready, taking part; open). They come from the stores' own counts
  and the manager's stage counters, not from reading every child.

:meth:`ServiceMetrics.routes` is the ``GET /metrics`` route: an operator token is required (the
bearer token a scraper sends; any role, a ``reader``'s is enough), unless the app serves without
tokens or ``public``. The full list of metrics is in ``docs/howto/metrics.md``.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import HealthStatus, TaskService
from release_coordinator.coordinator.wire import ServiceStatus, TaskAnswer, TaskRequest
from release_coordinator.errors import (
    BadGatewayError,
    MalformedAnswerError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    TransientTransportError,
    TransportError,
)
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import RolloutState
from release_coordinator.rollout.reports import StageCounts
from release_coordinator.rollout.strategy import StageType
from release_coordinator.server.common import guarded, method_routes
from release_coordinator.server.token_auth import (
    TokenAuth,
    Verifier,
    authorize,
    bearer_token,
    unauthorized,
)
from release_coordinator.transports.base import TaskServiceTransport

__all__ = ["METRICS_PATH", "MeteredTransport", "ServiceMetrics", "StoreCollector", "outcome_of"]

log = logging.getLogger(__name__)

#: Where the metrics are served.
METRICS_PATH = "/metrics"
#: Seconds: an HTTP request's buckets (a poll takes about a millisecond).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds: a task-service call's buckets (up to the transport's time-outs).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Rollouts whose children are listed (the others ended, or have not begun).
LISTED_ROLLOUTS = frozenset({RolloutState.ACTIVE, RolloutState.PAUSED})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_SERIES = 10_000  # HTTP series whose labelled children are kept at hand
_REMEMBERED_TROUBLE = 10_000  # requests remembered as having met transient trouble


def outcome_of(error: TransportError | None) -> str:
    """The ``outcome`` label of a task-service call that ended with ``error`` (None: ``ok``)."""
    if error is None:
        return "ok"
    if isinstance(error, PeerUnreachableError):
        return "unreachable"
    if isinstance(error, PeerTimeoutError):
        return "timeout"
    if isinstance(error, BadGatewayError):
        return "bad_gateway"
    if isinstance(error, MalformedAnswerError):
        return "malformed"
    if isinstance(error, PeerAnswerError):
        return "http_error"
    return "error"


_RequestKey = tuple[str, str, str, str]  # service id, action, task, release


class MeteredTransport(TaskServiceTransport):
    """A task-service transport that times every call of ``inner`` for ``metrics`` and counts
    retries: a request sent again (same service, action, task and release) after it met
    transient trouble. Everything else is ``inner``'s.

    A batch (:meth:`send_many`) is timed call by call when ``inner`` sends it with the base
    class's concurrent sends (as :class:`~release_coordinator.transports.http.HttpTransport`
    does); a transport that sends a batch its own way (:class:`~release_coordinator.transports.
    memory.MemoryTransport`) keeps doing so, and each call of it is given the batch's time."""

    def __init__(self, inner: TaskServiceTransport, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self._own_batches = type(inner).send_many is not TaskServiceTransport.send_many
        self._troubled: dict[_RequestKey, None] = {}

    def _key(self, service: TaskService, request: TaskRequest) -> _RequestKey:
        return (service.id, request.action.value, request.task_id, request.release_id)

    def _noted(
        self, service: TaskService, request: TaskRequest, error: TransportError | None, took: float
    ) -> None:
        key = self._key(service, request)
        if key in self._troubled:
            del self._troubled[key]
            self.metrics.retried(service, request.action.value)
        if isinstance(error, TransientTransportError):
            self._troubled[key] = None
            if len(self._troubled) > _REMEMBERED_TROUBLE:  # retries abandoned: forget the oldest
                del self._troubled[next(iter(self._troubled))]
        self.metrics.called(service, request.action.value, outcome_of(error), took)

    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        started = time.perf_counter()
        try:
            answer = await self.inner.send(service, request)
        except TransportError as error:
            self._noted(service, request, error, time.perf_counter() - started)
            raise
        self._noted(service, request, None, time.perf_counter() - started)
        return answer

    async def send_many(
        self, calls: Sequence[tuple[TaskService, TaskRequest]]
    ) -> list[TaskAnswer | TransportError]:
        if not self._own_batches:
            return await super().send_many(calls)  # each call through self.send, timed
        started = time.perf_counter()
        results = await self.inner.send_many(calls)
        took = time.perf_counter() - started
        for (service, request), result in zip(calls, results, strict=False):
            error = result if isinstance(result, TransportError) else None
            self._noted(service, request, error, took)
        return results

    async def status(self, service: TaskService) -> ServiceStatus:
        started = time.perf_counter()
        error: TransportError | None = None
        try:
            return await self.inner.status(service)
        except TransportError as caught:
            error = caught
            raise
        finally:
            self.metrics.called(service, "status", outcome_of(error), time.perf_counter() - started)

    def check_url(self, url: str) -> str | None:
        return self.inner.check_url(url)

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.frozen
class _RolloutView:
    rollout_id: str
    counts: Mapping[tuple[ReleaseStatus, tuple[StageStatus, ...]], int]
    stage_names: tuple[str, ...]
    barriers: Mapping[str, StageCounts]


@attrs.frozen
class _Snapshot:
    """What one scrape read from the stores."""

    ok: bool = False
    releases: Mapping[str, int] = attrs.field(factory=dict)
    tasks: Mapping[str, int] = attrs.field(factory=dict)
    services: tuple[TaskService, ...] = ()
    rollouts: Mapping[str, int] = attrs.field(factory=dict)
    listed: tuple[_RolloutView, ...] = ()


def _gauge(name: str, text: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=list(labels))


class StoreCollector:
    """The gauges read from the stores (a prometheus-client custom collector): :meth:`read`
    takes a snapshot (async, from the stores), :meth:`collect` turns the last one into metric
    families (sync, as the registry asks)."""

    def __init__(self, coordinator: Coordinator, manager: RolloutManager) -> None:
        self.coordinator = coordinator
        self.manager = manager
        self.snapshot = _Snapshot()
        self._stages: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    async def read(self) -> _Snapshot:
        """Read the stores now; a failure is logged and gives a snapshot that says so."""
        try:
            return await self._read()
        except Exception as error:
            log.warning("metrics: reading the stores failed: %s", type(error).__name__)
            return _Snapshot()

    async def _read(self) -> _Snapshot:
        store = self.coordinator.store
        releases = await store.list_releases()
        by_state = dict.fromkeys((s.value for s in ReleaseState), 0)
        tasks = dict.fromkeys((s.value for s in TaskState), 0)
        for release in releases:
            by_state[release.state.value] += 1
            if not release.is_final:
                for task in await store.list_tasks(release.id):
                    tasks[task.state.value] += 1
        services = tuple(await store.list_services())
        rollouts = dict.fromkeys((s.value for s in RolloutState), 0)
        listed = []
        for rollout in await self.manager.list_rollouts():
            rollouts[rollout.state.value] += 1
            if rollout.state in LISTED_ROLLOUTS:
                listed.append(await self._rollout(rollout.id))
        return _Snapshot(True, by_state, tasks, services, rollouts, tuple(listed))

    async def _rollout(self, rollout_id: str) -> _RolloutView:
        stages = self._stages.get(rollout_id)
        if stages is None:  # a rollout's strategy never changes
            strategy = (await self.manager.store.get_bundle(rollout_id)).strategy
            waits = tuple(s.name for s in strategy.stages if s.type is StageType.WAIT_FOR_SIGNAL)
            stages = self._stages[rollout_id] = (tuple(strategy.stage_names), waits)
        counts = await self.manager.store.status_counts(rollout_id)
        barriers = {name: await self.manager.stage_counts(rollout_id, name) for name in stages[1]}
        return _RolloutView(rollout_id, counts, stages[0], barriers)

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        up = _gauge("rc_metrics_stores_read", "1 if this scrape could read the stores, else 0")
        up.add_metric([], 1 if snapshot.ok else 0)
        yield up
        if not snapshot.ok:
            return
        yield from self._coordinator(snapshot)
        yield from self._rollouts(snapshot)

    def _coordinator(self, snapshot: _Snapshot) -> Iterator[Metric]:
        releases = _gauge("rc_releases", "Releases by state", ["state"])
        for state, n in snapshot.releases.items():
            releases.add_metric([state], n)
        tasks = _gauge("rc_tasks", "Tasks of unfinished releases by state", ["state"])
        for state, n in snapshot.tasks.items():
            tasks.add_metric([state], n)
        labels = ["service_id", "service"]
        health = _gauge(
            "rc_task_service_health",
            "1 for a task service's health status (ok, down, unknown), 0 for the others",
            [*labels, "status"],
        )
        failures = _gauge(
            "rc_task_service_consecutive_failures", "Failed health checks in a row", labels
        )
        enabled = _gauge("rc_task_service_enabled", "1 if new releases include the service", labels)
        for service in snapshot.services:
            names = [service.id, service.name]
            for status in HealthStatus:
                health.add_metric([*names, status.value], int(service.health.status is status))
            failures.add_metric(names, service.health.consecutive_failures)
            enabled.add_metric(names, int(service.enabled))
        yield from (releases, tasks, health, failures, enabled)

    def _rollouts(self, snapshot: _Snapshot) -> Iterator[Metric]:
        rollouts = _gauge("rc_rollouts", "Rollouts by state", ["state"])
        for state, n in snapshot.rollouts.items():
            rollouts.add_metric([state], n)
        children = _gauge(
            "rc_rollout_children",
            "Children targeted by an active or paused rollout, by release status",
            ["rollout", "status"],
        )
        stages = _gauge(
            "rc_rollout_stage_children",
            "Children targeted by an active or paused rollout, by stage and stage status",
            ["rollout", "stage", "status"],
        )
        b = ["rollout", "stage"]
        waiting = _gauge("rc_barrier_waiting_children", "Children waiting on the barrier", b)
        ready = _gauge("rc_barrier_ready_children", "Children waiting or told to end it", b)
        part = _gauge("rc_barrier_taking_part_children", "Children taking part in the stage", b)
        opened = _gauge("rc_barrier_open", "1 once the stage's barrier opened", b)
        for view in snapshot.listed:
            by_status = dict.fromkeys((s.wire_name for s in ReleaseStatus), 0)
            by_stage = {
                name: dict.fromkeys((s.wire_name for s in StageStatus), 0)
                for name in view.stage_names
            }
            for (status, statuses), n in view.counts.items():
                by_status[status.wire_name] += n
                for name, stage_status in zip(view.stage_names, statuses, strict=False):
                    bucket = by_stage.setdefault(name, {})
                    bucket[stage_status.wire_name] = bucket.get(stage_status.wire_name, 0) + n
            for status_name, n in by_status.items():
                children.add_metric([view.rollout_id, status_name], n)
            for name, bucket in by_stage.items():
                for status_name, n in bucket.items():
                    stages.add_metric([view.rollout_id, name, status_name], n)
            for name, counts in view.barriers.items():
                labels = [view.rollout_id, name]
                waiting.add_metric(labels, counts.waiting)
                ready.add_metric(labels, counts.ready_count)
                part.add_metric(labels, counts.taking_part)
                opened.add_metric(labels, int(counts.open))
        yield from (rollouts, children, stages, waiting, ready, part, opened)


def _count(count: list[int], durations: list[float], seconds: float) -> None:
    count[0] += 1
    durations[bisect.bisect_left(HTTP_BUCKETS, seconds)] += 1
    durations[-1] += seconds


class HttpTally:
    """The HTTP requests' counter (``rc_http_requests``) and duration histogram
    (``rc_http_request_duration_seconds``), counted in plain numbers as requests end and
    handed to prometheus-client at a scrape (a collector of the registry): a request costs
    three additions instead of three locked increments. The event loop's thread alone counts
    and scrapes."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], list[int]] = {}
        # (method, route) -> a count per bucket of HTTP_BUCKETS, one over them all, the sum
        self._durations: dict[tuple[str, str], list[float]] = {}

    def series(self, method: str, route: str, status: str) -> tuple[list[int], list[float]]:
        """The counters of one series: ``[count]``, and the durations' (see above)."""
        count = self._counts.setdefault((method, route, status), [0])
        durations = self._durations.get((method, route))
        if durations is None:
            durations = self._durations[(method, route)] = [0.0] * (len(HTTP_BUCKETS) + 2)
        return count, durations

    def add(self, method: str, route: str, status: str, seconds: float) -> None:
        """Count one request of the series (what :meth:`ServiceMetrics.request` does with the
        series it keeps at hand)."""
        _count(*self.series(method, route, status), seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "rc_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        for labels, (count,) in self._counts.items():
            requests.add_metric(list(labels), count)
        yield requests
        seconds = HistogramMetricFamily(
            "rc_http_request_duration_seconds",
            "Time to answer an HTTP request",
            labels=["method", "route"],
        )
        bounds = [*(repr(float(b)) for b in HTTP_BUCKETS), "+Inf"]  # (as Histogram writes them)
        for pair, durations in self._durations.items():
            total, buckets = 0.0, []
            for bound, n in zip(bounds, durations[:-1], strict=True):
                total += n
                buckets.append((bound, total))
            seconds.add_metric(list(pair), buckets, sum_value=durations[-1])
        yield seconds


class ServiceMetrics:
    """The metrics of one app serving ``coordinator`` and ``manager`` (see the module
    documentation). Creating it wraps ``coordinator.transport`` in a :class:`MeteredTransport`
    (re-wrapping the inner transport if it was wrapped for another app already).
    ``operator_tokens``, ``verifier`` and ``public`` decide who may scrape (:meth:`routes`);
    ``process`` adds prometheus-client's ``process_*`` and ``python_info`` metrics."""

    def __init__(
        self,
        coordinator: Coordinator,
        manager: RolloutManager,
        operator_tokens: Iterable[str] | Mapping[str, str] = (),
        verifier: Verifier | None = None,
        public: bool = False,
        *,
        process: bool = True,
    ) -> None:
        self.operators = TokenAuth(operator_tokens, verifier, what="an operator token")
        self.public = public or not self.operators.configured
        self.registry = CollectorRegistry()
        self.store = StoreCollector(coordinator, manager)
        self.registry.register(self.store)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.http = HttpTally()
        r.register(self.http)
        self.call_seconds = Histogram(
            "rc_task_service_request_duration_seconds",
            "Time of the coordinator's calls to task services (the fan-out and health checks)",
            ["service", "action", "outcome"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "rc_task_service_retries",
            "Requests to task services sent again after transient trouble",
            ["service", "action"],
            registry=r,
        )
        self._series: dict[tuple[str, str, int | None], tuple[list[int], list[float]]] = {}
        transport = coordinator.transport
        inner = transport.inner if isinstance(transport, MeteredTransport) else transport
        coordinator.transport = MeteredTransport(inner, self)

    # -- fed by the code paths -----------------------------------------------------------------
    def request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        """One HTTP request answered (:class:`~release_coordinator.server.access_log.
        AccessLog` calls it): ``route`` is its route template."""
        series = self._series.get((method, route, status))
        if series is None:  # (naming the series costs more than counting)
            shown = method if method in _METHODS else "other"
            code = "none" if status is None else str(status)
            series = self.http.series(shown, route, code)
            if len(self._series) < _MAX_SERIES:
                self._series[(method, route, status)] = series
        _count(*series, seconds)

    def called(self, service: TaskService, action: str, outcome: str, seconds: float) -> None:
        """One call to a task service ended with ``outcome``."""
        self.call_seconds.labels(service.name, action, outcome).observe(seconds)

    def retried(self, service: TaskService, action: str) -> None:
        self.retries.labels(service.name, action).inc()

    # -- served --------------------------------------------------------------------------------
    async def scrape(self) -> bytes:
        """The text exposition, the stores read now."""
        snapshot = await self.store.read()
        self.store.snapshot = snapshot  # (set and used without an await in between)
        return generate_latest(self.registry)

    def routes(self) -> list[BaseRoute]:
        """``GET /metrics``: an operator's bearer token (one of ``operator_tokens``, or one
        ``verifier`` accepts; any role, a reader's too) is required, unless ``public`` or the
        app has no operator token at all; 401 otherwise. Tokens are never counted or logged."""

        async def metrics(request: Request) -> Response:
            if not self.public:
                token = bearer_token(request)
                who = None if token is None else await self.operators.identify(token)
                if who is None:
                    raise unauthorized()
                authorize(who, request)  # a GET: every role may scrape
            return Response(await self.scrape(), media_type=CONTENT_TYPE_LATEST)

        return list(method_routes([(METRICS_PATH, "GET", guarded(metrics))]))
