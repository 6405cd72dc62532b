"""What the tests with real processes share: a free loopback port, and a clean stop."""

from __future__ import annotations

import socket
import subprocess

HOST = "127.0.0.1"  # never another address


def free_port() -> int:
    """A TCP port free on :data:`HOST` now (another process may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if ``process`` does not exit within ten seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
