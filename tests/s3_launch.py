"""S3 servers on loopback for the tests and the benchmarks: moto in-process, LocalStack
as a child. Free of pytest, so that ``benchmarks/s3.py`` can use it too."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, answering one request at a time.

    moto checks conditional writes without a lock: answering concurrent requests, it can
    let two conditional PUTs (or completions) win. One at a time, its checks are atomic, as
    S3's are, so races test filespool rather than moto's missing lock.
    """
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class SerialMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            threaded = False  # one request at a time: moto's conditional checks become atomic
            self._server = make_server(
                self._ip_address, self._port, app, threaded, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def localstack(python: str, timeout: float = 120) -> Iterator[str]:
    """LocalStack's S3 as a child on a free loopback port, without Docker, in its own TMPDIR.

    Its object files still go to /tmp/localstack-s3-storage/<bucket>: use unique buckets.
    """
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="filespool-localstack-")
    log_path = os.path.join(scratch, "localstack.log")
    url = f"http://127.0.0.1:{port}"
    try:
        process = _start_localstack(python, port, scratch, log_path)
        try:
            _wait_for_health(process, url, log_path, timeout)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _start_localstack(
    python: str, port: int, scratch: str, log_path: str
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        SERVICES="s3",
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        DNS_ADDRESS="0",
        DISABLE_EVENTS="1",
        SKIP_SSL_CERT_DOWNLOAD="1",
        TMPDIR=scratch,  # LocalStack's own files; objects still go to /tmp/localstack-s3-storage
    )
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [python, "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_health(process: subprocess.Popen[bytes], url: str, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            with open(log, errors="replace") as file:
                tail = file.read()[-2000:]
            raise RuntimeError(f"LocalStack exited with {process.returncode}:\n{tail}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/_localstack/health", timeout=1),
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"LocalStack did not answer at {url} in {timeout:.0f} s")
        time.sleep(0.1)
