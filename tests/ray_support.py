"""A real local Ray cluster for the tests marked ``ray``: a head node started with ``ray start --head --block``
in its own process group (so a test can kill a driver and the cluster lives on), 2 CPUs, free ports, its own
temp dir; workers import the project and ``tests/`` (the fake encoders) through ``PYTHONPATH``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 90) -> Iterator[str]:
    """Start a head node; yields its address (``127.0.0.1:port``); stops it (the whole process group) after."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="xr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # no token auth: a ~/.ray/auth_token left by any local `ray.init()` would otherwise turn it on for this head only
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a test cluster of its own: no token (drivers inherit it)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    ports = {"--port": port, "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
             "--object-manager-port": free_port(), "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port()}
    cmd = [str(ray_bin), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
           *(f"{k}={v}" for k, v in ports.items())]
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {(Path(temp) / 'head.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not listen on {address} within {timeout} s")
            time.sleep(0.3)
        yield address
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # workers and raylet of this cluster only
        log.close()
