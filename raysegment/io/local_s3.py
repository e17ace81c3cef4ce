"""A real HTTP S3 endpoint for tests: `moto_server` in a child process on 127.0.0.1.

Tests talk to it exactly as to AWS S3 or MinIO (signed HTTP requests through pyarrow and boto3), so the
storage layer, Ray workers and the CLI are exercised end to end without any cloud account.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers with any HTTP status (moto answers / with 200)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # an HTTP error status still means the server is up
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s: {last}")


@dataclass
class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` as a child process; `stop()` ends it."""

    port: int
    process: subprocess.Popen
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"),
                               timeout=10)


def start_moto(log_path: str, port: int | None = None, timeout_s: float = 60.0) -> MotoServer:
    """Start moto_server on 127.0.0.1 (free port unless given) and wait until it answers."""
    port = port or free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    cmd = [exe, "-H", "127.0.0.1", "-p", str(port)] if exe else [
        sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = MotoServer(port, process, log_path)
    try:
        wait_http(server.url, timeout_s)
    except BaseException:
        server.stop()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"moto_server exited with {process.returncode}; see {log_path}")
    return server
