"""The hub behind real WebSockets (the aiohttp app on a local port, no Kafka): a client that stops reading is
dropped while a reading client gets every message in order, and publishing never waits for either."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import aiohttp
from aiohttp import web

from smap_shared.fleet import default_fleet
from smap_shared.infra.ports import free_port
from smap_shared.operations.api import Catalog
from smap_shared.operations.app import HUB, make_app
from smap_shared.operations.live import LiveMessage
from smap_shared.settings import OperationServerSettings

CATALOG = Catalog(default_fleet(), {e: 25 for e in default_fleet().fleet_entities()})
MESSAGES, PAD = 600, 50_000


async def stalled_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake, then never another read (tiny receive buffer: the stall shows at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/smap?satellite_id=SAT-001 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def scenario() -> tuple[list[int], int, float]:
    app = make_app(OperationServerSettings(ws_queue_max=256), catalog=CATALOG, live_feed=False)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        _, slow = await stalled_client(port)
        async with aiohttp.ClientSession() as http:
            fast = await http.ws_connect(f"http://127.0.0.1:{port}/ws/smap?satellite_id=SAT-001&entity=A-1",
                                         max_msg_size=0)
            assert (await fast.receive_json(timeout=10))["type"] == "subscribed"
            hub = app[HUB]
            while len(hub.clients) < 2:
                await asyncio.sleep(0.01)
            received: list[int] = []

            async def read() -> None:
                while len(received) < MESSAGES:
                    received.append(json.loads((await fast.receive(timeout=30)).data)["n"])

            reading = asyncio.create_task(read())
            pad = "x" * PAD
            longest = 0.0
            for n in range(MESSAGES):
                t = time.monotonic()
                hub.publish(LiveMessage("SAT-001", "A-1", json.dumps({"n": n, "pad": pad})))
                longest = max(longest, time.monotonic() - t)
                await asyncio.sleep(0.003)
            await asyncio.wait_for(reading, 60)
            clients = len(hub.clients)
            await fast.close()
        slow.close()
        return received, clients, longest
    finally:
        await runner.cleanup()


def test_a_stalled_socket_is_dropped_and_a_reading_one_gets_everything() -> None:
    received, clients, longest_publish_s = asyncio.run(scenario())
    assert received == list(range(MESSAGES))
    assert clients == 1  # the stalled one was dropped
    assert longest_publish_s < 0.25  # publishing never waited on a socket (a blocked send would take 5 s)
