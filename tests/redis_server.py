"""A throwaway ``redis-server`` on loopback for tests and benchmarks.

``RedisServer`` picks a free port, starts ``redis-server`` on 127.0.0.1 with no
persistence (``--save '' --appendonly no``), waits until it answers PING and kills it at
:meth:`RedisServer.stop`; :meth:`RedisServer.restart` brings it back on the same port
with no data (what a crashed Redis without persistence looks like).

:func:`require_redis_server` skips the calling tests when the binary is absent, with
the reason, except under CI (``CI=true``), where a missing server is a failure: CI
installs it (``.ci/run``), so its absence there means the tests silently stopped running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisServer", "redis_server_binary", "require_redis_server"]

_START_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` (``$PATH``, then Debian's ``/usr/bin``), or ``None``."""
    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    return found


def require_redis_server() -> str:
    """The binary's path; skips the test without it, but fails under ``CI=true``."""
    binary = redis_server_binary()
    if binary is not None:
        return binary
    reason = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the Redis tests", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:<port>``.

    Args:
        binary: the ``redis-server`` executable.
        port: a port to use; a free one is picked when omitted.
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port if port is not None else _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="isched-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id (to pause it with SIGSTOP in a test)."""
        assert self._proc is not None, "the server is not running"
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait (bounded) until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer within 10 s (its log attached).
        """
        if self.is_running:
            return self
        log = Path(self._dir.name) / "redis.log"
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            str(log),
            "--protected-mode",
            "no",
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _ping(self.port, 0.2):
                return self
            time.sleep(0.02)
        self.stop()
        text = log.read_text() if log.exists() else "(no log)"
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{text[-2000:]}")

    def stop(self) -> None:
        """Kill the server (SIGKILL: no shutdown, as in a crash) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Kill it and start a fresh one, with no data, on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
