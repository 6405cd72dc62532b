"""The exit statuses of the operator's commands, and the one of each error."""

from __future__ import annotations

from release_coordinator.client.errors import AccessDeniedError
from release_coordinator.errors import (
    ConfigurationError,
    MalformedAnswerError,
    PeerAnswerError,
    ReleaseCoordinatorError,
    StorageError,
    TransportError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAUTHENTICATED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "exit_code",
]

EXIT_OK = 0  #: success; a watched release published, a watched rollout completed well
EXIT_REFUSED = 1  #: the server refused (4xx), or the watched release/rollout failed
EXIT_USAGE = 2  #: bad usage: options (argparse), files that cannot be read
EXIT_UNREACHABLE = 3  #: the server cannot be reached, or answered 5xx
EXIT_UNAUTHENTICATED = 4  #: 401 or 403: no valid token in RC_TOKEN, or not allowed

EXIT_CODES = """\
environment variables:
  RC_URL    the default of --url
  RC_TOKEN  the operator token, sent as a bearer header (never an option, never printed)

exit status:
  0  success (watch: the release published, the rollout completed without failures)
  1  the server refused (4xx: invalid, unknown id, a state that does not allow it),
     or the watched release/rollout ended badly
  2  bad usage
  3  the server cannot be reached, or answered 5xx
  4  not authenticated or not allowed (401, 403)
"""


def exit_code(error: ReleaseCoordinatorError) -> int:
    """The exit status for ``error`` (see :data:`EXIT_CODES`)."""
    if isinstance(error, AccessDeniedError):
        return EXIT_UNAUTHENTICATED
    if isinstance(error, ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, MalformedAnswerError):
        return EXIT_UNREACHABLE
    if isinstance(error, PeerAnswerError):
        return EXIT_UNREACHABLE if error.status_code >= 500 else EXIT_REFUSED
    if isinstance(error, TransportError | StorageError):
        return EXIT_UNREACHABLE
    return EXIT_REFUSED
