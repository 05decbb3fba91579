"""Azurite (Azure Storage's emulator, Node.js) as a child on a free loopback port.

Free of pytest. The npm package is installed by ``nox -s azure``, which names its
``--prefix`` folder in ``FILESPOOL_AZURITE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from s3_launch import free_port

ACCOUNT = "devstoreaccount1"
# The development account's published key (the same in every Azurite and the emulator).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(endpoint: str, key: str = KEY) -> str:
    """A connection string for the development account at ``endpoint`` (http://host:port)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{ACCOUNT};"
    )


def executable(installed: str) -> str:
    """The ``azurite-blob`` command of an npm ``--prefix`` folder (or the command itself)."""
    path = Path(installed)
    if path.is_file():
        return str(path)
    command = path / "node_modules" / ".bin" / "azurite-blob"
    if not command.exists():
        raise FileNotFoundError(
            f"no Azurite in {installed}: run npm install --prefix {installed} azurite"
        )
    return str(command)


@contextlib.contextmanager
def azurite(installed: str, timeout: float = 60) -> Iterator[str]:
    """Azurite's Blob service on a free loopback port, its data in a fresh temporary folder;
    yields its endpoint, ``http://127.0.0.1:<port>``."""
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="filespool-azurite-")
    log_path = os.path.join(scratch, "azurite.log")
    command = [
        executable(installed),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        os.path.join(scratch, "data"),
        "--skipApiVersionCheck",  # the SDK may speak a newer API version than Azurite knows
        "--loose",  # ignore the headers Azurite does not support, rather than refuse them
        "--silent",
    ]
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_for_port(process, port, log_path, timeout)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            with open(log, errors="replace") as file:
                tail = file.read()[-2000:]
            raise RuntimeError(f"Azurite exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Azurite did not listen on port {port} in {timeout:.0f} s")
        time.sleep(0.1)
