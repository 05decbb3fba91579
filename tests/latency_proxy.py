"""A loopback TCP proxy that adds a fixed latency to every request, as an object store in
the cloud would: each chunk a client sends reaches the server `delay` seconds later, in
order, while answers come back at once. Requests in flight on different connections
overlap, so a client that keeps many in flight gains what it would gain in the cloud.

Runs in its own process (`latency_proxy(...)`), so that its event loop does not compete
with the measured client for the GIL. Free of pytest: `benchmarks/s3.py` uses it.
Run alone: `python tests/latency_proxy.py http://127.0.0.1:PORT 0.02` prints its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator


async def _relay_with_delay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Send on what `reader` gets, each chunk `delay` seconds after it arrived."""
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(65536):
            line.put_nowait((time.monotonic() + delay, data))
        line.put_nowait((time.monotonic() + delay, b""))

    async def send() -> None:
        while True:
            due, data = await line.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    await asyncio.gather(receive(), send())


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve(upstream: tuple[str, int], delay: float) -> None:
    """Listen on a free loopback port, print it, and relay to `upstream` until killed."""

    async def handle(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        upstream_in, upstream_out = await asyncio.open_connection(*upstream)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(
                _relay_with_delay(client_in, upstream_out, delay),
                _relay(upstream_in, client_out),
            )
        client_out.close()
        upstream_out.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def latency_proxy(upstream: str, delay: float) -> Iterator[str]:
    """A proxy in a child process in front of `upstream` (an http:// URL); yields its URL."""
    process = subprocess.Popen(
        [sys.executable, __file__, upstream, str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the latency proxy did not start (it printed {url!r})")
        yield url
    finally:
        process.kill()
        process.wait()


def main() -> None:
    upstream, delay = sys.argv[1], float(sys.argv[2])
    host, port = upstream.rsplit("//", 1)[1].rstrip("/").split(":")
    asyncio.run(serve((host, int(port)), delay))


if __name__ == "__main__":
    main()
