"""release_coordinator: synchronized data releases and staged, geo-targeted function rollouts.

The public API is what this module exports (see ``__all__``); adapters that pull in optional
dependencies are imported from their own modules (``release_coordinator.storage.sql``,
``release_coordinator.server``).
"""

from __future__ import annotations

from release_coordinator._version import __version__
from release_coordinator.client.http import Client
from release_coordinator.coordinator.config import CoordinatorConfig, RetryPolicy
from release_coordinator.coordinator.delivery import WebhookDispatcher, WebhookRetry
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.events import Subscriber
from release_coordinator.coordinator.kit import KitTask, TaskServiceKit
from release_coordinator.coordinator.models import (
    Approval,
    CheckResult,
    Event,
    EventKind,
    EventType,
    HealthStatus,
    PublishGates,
    Release,
    ReleaseNote,
    ServiceHealth,
    Study,
    Task,
    TaskService,
)
from release_coordinator.coordinator.sync import SyncCoordinator
from release_coordinator.coordinator.webhook_records import (
    DeliveryState,
    Webhook,
    WebhookDelivery,
)
from release_coordinator.coordinator.webhooks import (
    new_webhook_secret,
    sign_webhook,
    verify_webhook,
)
from release_coordinator.coordinator.wire import (
    ServiceStatus,
    TaskAction,
    TaskAnswer,
    TaskRequest,
    TaskStateReport,
)
from release_coordinator.errors import (
    BadGatewayError,
    BundleError,
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    GeoJSONError,
    InvalidTransitionError,
    MalformedAnswerError,
    NotFoundError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    ReleaseCoordinatorError,
    SchemaError,
    StorageError,
    StrategyError,
    TransientTransportError,
    TransportError,
    ValidationError,
    WebhookSignatureError,
)
from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE, ReleaseState, TaskState
from release_coordinator.fsm.rollout import (
    CHILD_RELEASE_MACHINE,
    STAGE_MACHINE,
    ReleaseStatus,
    StageStatus,
)
from release_coordinator.gates import ReleaseGate
from release_coordinator.rollout.approving import StageApproval
from release_coordinator.rollout.archive import ArchiveLimits, FunctionArchive
from release_coordinator.rollout.events import RolloutEvent, RolloutEventFilter, RolloutEventKind
from release_coordinator.rollout.fleet_report import FleetResult
from release_coordinator.rollout.geo import Area, GeoIndex
from release_coordinator.rollout.interventions import RetryResult
from release_coordinator.rollout.judgement import (
    CanaryVerdict,
    Judgement,
    StageJudgement,
    Verdict,
    judge,
)
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ChildStage,
    Outcome,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.rollout.pacing import Pacing, PollHints, Ramp, Window
from release_coordinator.rollout.policies import GlobalIncremental, LocationSequential, Waves
from release_coordinator.rollout.relay import Relay
from release_coordinator.rollout.reports import (
    BarrierState,
    RolloutReport,
    StageCounts,
    StageReportRow,
)
from release_coordinator.rollout.results import (
    ResultReport,
    StageReport,
    StageSummary,
    TimesSummary,
    aggregate,
    parse_result,
)
from release_coordinator.rollout.simulate import FleetConfig, simulate
from release_coordinator.rollout.strategy import (
    EndAction,
    EndCondition,
    Function,
    FunctionVersion,
    MetricCondition,
    Stage,
    StageType,
    Strategy,
    Threshold,
    Variant,
    dump_strategy,
    parse_strategy,
)
from release_coordinator.rollout.sync import SyncRolloutManager
from release_coordinator.rollout.what_if import WhatIf, WhatIfGroup
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer
from release_coordinator.storage.base import CoordinatorStore, EventFilter, StepEvent, TaskChange
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import BarrierRecord, RolloutStore
from release_coordinator.storage.webhook_base import WebhookStore
from release_coordinator.transports.base import ParentLink, TaskServiceTransport
from release_coordinator.transports.http import HttpParent, HttpTransport
from release_coordinator.transports.memory import (
    Fault,
    InProcessParent,
    InProcessService,
    MemoryTransport,
    SentRequest,
)

__all__ = [
    "CHILD_RELEASE_MACHINE",
    "RELEASE_MACHINE",
    "STAGE_MACHINE",
    "TASK_MACHINE",
    "Approval",
    "ArchiveLimits",
    "Area",
    "BadGatewayError",
    "BarrierRecord",
    "BarrierState",
    "BundleError",
    "CanaryVerdict",
    "CheckResult",
    "Child",
    "ChildRelease",
    "ChildStage",
    "Client",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "ConflictError",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorStore",
    "DeliveryState",
    "EndAction",
    "EndCondition",
    "EndStageAnswer",
    "Event",
    "EventFilter",
    "EventKind",
    "EventType",
    "Fault",
    "FleetConfig",
    "FleetResult",
    "Function",
    "FunctionArchive",
    "FunctionVersion",
    "GeoIndex",
    "GeoJSONError",
    "GlobalIncremental",
    "HealthStatus",
    "HttpParent",
    "HttpTransport",
    "InProcessParent",
    "InProcessService",
    "InvalidTransitionError",
    "Judgement",
    "KitTask",
    "LocationSequential",
    "MalformedAnswerError",
    "MemoryRolloutStore",
    "MemoryStore",
    "MemoryTransport",
    "MetricCondition",
    "NotFoundError",
    "Outcome",
    "Pacing",
    "ParentLink",
    "PeerAnswerError",
    "PeerTimeoutError",
    "PeerUnreachableError",
    "PollAnswer",
    "PollHints",
    "PublishGates",
    "Ramp",
    "Relay",
    "Release",
    "ReleaseBundle",
    "ReleaseCoordinatorError",
    "ReleaseGate",
    "ReleaseNote",
    "ReleaseState",
    "ReleaseStatus",
    "ResultReport",
    "RetryPolicy",
    "RetryResult",
    "Rollout",
    "RolloutEvent",
    "RolloutEventFilter",
    "RolloutEventKind",
    "RolloutManager",
    "RolloutReport",
    "RolloutState",
    "RolloutStore",
    "SchemaError",
    "SentRequest",
    "ServiceHealth",
    "ServiceStatus",
    "SimulatedLeaf",
    "Stage",
    "StageApproval",
    "StageCounts",
    "StageJudgement",
    "StageReport",
    "StageReportRow",
    "StageStatus",
    "StageSummary",
    "StageType",
    "StepEvent",
    "StorageError",
    "Strategy",
    "StrategyError",
    "Study",
    "Subscriber",
    "SyncCoordinator",
    "SyncRolloutManager",
    "Task",
    "TaskAction",
    "TaskAnswer",
    "TaskChange",
    "TaskRequest",
    "TaskService",
    "TaskServiceKit",
    "TaskServiceTransport",
    "TaskState",
    "TaskStateReport",
    "Threshold",
    "TimesSummary",
    "TransientTransportError",
    "TransportError",
    "ValidationError",
    "Variant",
    "Verdict",
    "Waves",
    "Webhook",
    "WebhookDelivery",
    "WebhookDispatcher",
    "WebhookRetry",
    "WebhookSignatureError",
    "WebhookStore",
    "WhatIf",
    "WhatIfGroup",
    "Window",
    "__version__",
    "aggregate",
    "dump_strategy",
    "judge",
    "new_webhook_secret",
    "parse_result",
    "parse_strategy",
    "sign_webhook",
    "simulate",
    "verify_webhook",
]
