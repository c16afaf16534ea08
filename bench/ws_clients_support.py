"""The WebSocket clients of ``bench_ws_clients``: one asyncio process, no Django.

``python -m bench.ws_clients_support`` reads one JSON line on stdin (``base``: ws:// URL,
``origin``, ``cookie``, ``clients``: ``[{"path", "channel"}]``), connects every client (session
cookie, as a browser would), prints ``ready`` and reads on. Then the driver publishes; when it
is done it sends one more JSON line: ``{"final": {channel: last seq published}}``. The clients
read until each has reached its channel's final ``seq`` (or ``drain_s`` passed), and the
process prints one JSON line of results and exits.

Each client follows the protocol of ``tradeapp.consumers``: the first message is a snapshot with
each stream's ``seq``; an event at or below the last known ``seq`` is a duplicate (it raced the
snapshot) and is ignored; ``seq`` one above is in order; a jump is a gap: the client asks for a
fresh snapshot (``{"type": "snapshot"}``), which repairs it. Latency of an in-order event:
receive time minus its ``ts`` (publish time, epoch ms), same clock (one machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


@dataclass
class Client:
    path: str
    channel: str
    last: int = 0
    awaiting_snapshot: bool = False
    received: int = 0
    in_order: int = 0
    duplicates: int = 0
    gaps: int = 0
    lost: int = 0
    repairs: int = 0
    snapshots: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Set when the server closed the connection before the run ended (code, reason).
    closed: str | None = None
    shutting_down: bool = False
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    target: int | None = None

    def check_reached(self) -> None:
        if self.target is not None and self.last >= self.target and not self.awaiting_snapshot:
            self.reached.set()


async def _open(base: str, origin: str, cookie: str, client: Client) -> Any:
    ws = await connect(
        base + client.path,
        origin=origin,
        additional_headers={"Cookie": cookie},
        open_timeout=30,
        max_queue=None,
        compression=None,
    )
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if first.get("type") != "snapshot" or client.channel not in first.get("streams", {}):
        raise RuntimeError(f"{client.path}: first message is not a snapshot: {first}")
    client.last = int(first["streams"][client.channel])
    client.snapshots = 1
    return ws


async def _read(ws: Any, client: Client) -> None:
    try:
        await _read_messages(ws, client)
    except ConnectionClosed:
        pass
    if not client.shutting_down:
        client.closed = f"{ws.close_code} {ws.close_reason or ''}".strip()
        client.reached.set()  # nothing more will come: stop waiting for it


async def _read_messages(ws: Any, client: Client) -> None:
    async for raw in ws:
        now_ms = time.time() * 1000.0
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "snapshot":
            client.snapshots += 1
            seq = int(message["streams"][client.channel])
            if client.awaiting_snapshot:
                client.awaiting_snapshot = False
                client.repairs += 1
            client.last = max(client.last, seq)
            client.check_reached()
            continue
        if kind == "error" or message.get("channel") != client.channel:
            client.errors.append(str(message)[:200])
            continue
        client.received += 1
        seq = int(message["seq"])
        if seq <= client.last:
            client.duplicates += 1
            continue
        if seq == client.last + 1:
            client.in_order += 1
            client.latencies.append(now_ms - float(message["ts"]))
        else:
            client.gaps += 1
            client.lost += seq - client.last - 1
            if not client.awaiting_snapshot:
                client.awaiting_snapshot = True
                await ws.send(json.dumps({"type": "snapshot"}))
        client.last = seq
        client.check_reached()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    clients = [Client(path=c["path"], channel=c["channel"]) for c in config["clients"]]
    gate = asyncio.Semaphore(10)

    async def open_one(client: Client) -> Any:
        async with gate:
            return await _open(config["base"], config["origin"], config["cookie"], client)

    started = time.perf_counter()
    sockets = await asyncio.gather(*(open_one(c) for c in clients))
    connect_s = time.perf_counter() - started
    readers = [asyncio.create_task(_read(ws, c)) for ws, c in zip(sockets, clients, strict=True)]
    print("ready", flush=True)

    line = await reader.readline()
    final = json.loads(line)["final"]
    for client in clients:
        client.target = int(final[client.channel])
        client.check_reached()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.reached.wait() for c in clients)), config.get("drain_s", 15)
        )
    for client in clients:
        client.shutting_down = True
    for ws in sockets:
        await ws.close()
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    result = {
        "connect_s": connect_s,
        "clients": [
            {
                "path": c.path,
                "channel": c.channel,
                "last": c.last,
                "target": c.target,
                "received": c.received,
                "in_order": c.in_order,
                "duplicates": c.duplicates,
                "gaps": c.gaps,
                "lost": c.lost,
                "repairs": c.repairs,
                "snapshots": c.snapshots,
                "unrepaired": int(c.awaiting_snapshot),
                "closed": c.closed,
                "errors": c.errors[:5],
                "latencies": c.latencies,
            }
            for c in clients
        ],
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(_main())
