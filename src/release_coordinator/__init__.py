"""release_coordinator: synchronized data releases and staged, geo-targeted function rollouts.

The public API is what this module exports (see ``__all__``); adapters that pull in optional
dependencies are imported from their own modules (``release_coordinator.storage.sql``,
``release_coordinator.server``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from release_coordinator.coordinator import (
    Coordinator,
    CoordinatorConfig,
    RetryPolicy,
    Subscriber,
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
)
from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE, ReleaseState, TaskState
from release_coordinator.models import (
    Event,
    EventKind,
    EventType,
    HealthStatus,
    Release,
    ServiceHealth,
    Task,
    TaskService,
)
from release_coordinator.storage.base import CoordinatorStore, EventFilter, TaskChange
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.sync import SyncCoordinator
from release_coordinator.taskservice import KitTask, TaskServiceKit
from release_coordinator.transports.base import TaskServiceTransport
from release_coordinator.transports.http import HttpTransport
from release_coordinator.transports.memory import Fault, MemoryTransport, SentRequest
from release_coordinator.wire import ServiceStatus, TaskAction, TaskAnswer, TaskRequest

__all__ = [
    "RELEASE_MACHINE",
    "TASK_MACHINE",
    "BadGatewayError",
    "BundleError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "ConflictError",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorStore",
    "Event",
    "EventFilter",
    "EventKind",
    "EventType",
    "Fault",
    "GeoJSONError",
    "HealthStatus",
    "HttpTransport",
    "InvalidTransitionError",
    "KitTask",
    "MalformedAnswerError",
    "MemoryStore",
    "MemoryTransport",
    "NotFoundError",
    "PeerAnswerError",
    "PeerTimeoutError",
    "PeerUnreachableError",
    "Release",
    "ReleaseCoordinatorError",
    "ReleaseState",
    "RetryPolicy",
    "SchemaError",
    "SentRequest",
    "ServiceHealth",
    "ServiceStatus",
    "StorageError",
    "StrategyError",
    "Subscriber",
    "SyncCoordinator",
    "Task",
    "TaskAction",
    "TaskAnswer",
    "TaskChange",
    "TaskRequest",
    "TaskService",
    "TaskServiceKit",
    "TaskServiceTransport",
    "TaskState",
    "TransientTransportError",
    "TransportError",
    "ValidationError",
    "__version__",
]
