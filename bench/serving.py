"""Section `serving`: `spotify-genre serve` (one worker) under load, beside `spotify-genre predict` on the same
machine in the same run.

Clients are asyncio connections speaking plain HTTP/1.1 with keep-alive, their requests encoded before the clock
starts, so the client costs the server as little of the 2 cores as a client in Python can: one song a request from
16 clients at once (requests/s, p50 and p99 latency), and 1,000 songs a request from 2 clients (songs/s). The model
and preprocessor are those the pipeline trains with the default params; the songs, the raw dataset's.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import time

import numpy as np
import pandas as pd

from bench.context import Context
from bench.measure import BenchError, child_env, python, run, summary
from bench.prediction import songs_csv
from bench.project import RAW_CSV

CLIENTS = 16
LOAD_S, QUICK_LOAD_S = 10.0, 3.0
WARM_S = 2.0
BATCH_SONGS = 1_000
BATCH_CLIENTS = 2
BATCH_REQUESTS, QUICK_BATCH_REQUESTS = 40, 10
CLI_ROWS = 100_000
TARGET_P99_MS = 50.0
TARGET_SHARE_OF_CLI = 0.5  # songs/s at 1,000 songs a request, against the CLI's rows/s end to end


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


async def _client(port: int, requests: list[bytes], stop: float, limit: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while time.perf_counter() < stop and sent < limit:
            started = time.perf_counter()
            writer.write(requests[sent % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise BenchError(f"serve answered {head.splitlines()[0].decode(errors='replace')}")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            sent += 1
    finally:
        writer.close()


def _load(port: int, requests: list[bytes], clients: int, seconds: float, limit: int) -> tuple[float, list[float]]:
    """(wall seconds, each request's latency) of `clients` connections sending for `seconds` or `limit` requests."""
    latencies: list[float] = []

    async def everyone() -> None:
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, requests[i::clients] or requests, stop, limit, latencies)
                               for i in range(clients)))

    started = time.perf_counter()
    asyncio.run(everyone())
    return time.perf_counter() - started, latencies


def _songs(raw: pd.DataFrame) -> list[dict]:
    return [{key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
            for row in raw.to_dict("records")]


def measure(ctx: Context) -> dict:
    from spotify_genre.songs.schema import read_songs

    project = ctx.prepared("train")
    model, preprocessor = project / "models/model.pt", project / "models/preprocessor.json"
    raw = read_songs(str(project / RAW_CSV), "raw", required=(), allow_extra=True)
    songs = _songs(raw)

    rows = CLI_ROWS // 5 if ctx.quick else CLI_ROWS
    source = project / "serving-songs.csv"
    source.write_bytes(songs_csv(pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False), rows))
    ctx.log(f"serving: the CLI on {rows:,} rows, end to end x{ctx.runs}")
    cli = [run(python("-m", "spotify_genre.predict.cli", "predict", str(source), "-o", str(project / "serving-out.csv"),
                      "--model", str(model), "--preprocessor", str(preprocessor)), project).seconds
           for _ in range(ctx.runs)]

    port = _free_port()
    server = subprocess.Popen(python("-m", "spotify_genre.predict.cli", "serve", "--port", str(port), "--model", str(model),
                                     "--preprocessor", str(preprocessor), "--log-level", "warning",
                                     "--max-rows", str(BATCH_SONGS)),
                              cwd=project, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(server, port)
        singles = [_request(json.dumps([song]).encode()) for song in songs[:2000]]
        batches = [_request(json.dumps(songs[start:start + BATCH_SONGS]).encode())
                   for start in range(0, min(len(songs), 20 * BATCH_SONGS), BATCH_SONGS)]
        seconds = QUICK_LOAD_S if ctx.quick else LOAD_S
        _load(port, singles, CLIENTS, WARM_S, 10**9)
        one_song = []
        for _ in range(ctx.runs):
            ctx.log(f"serving: one song a request, {CLIENTS} clients, {seconds:g} s")
            wall, latencies = _load(port, singles, CLIENTS, seconds, 10**9)
            one_song.append((len(latencies) / wall, np.percentile(latencies, 50), np.percentile(latencies, 99)))
        count = QUICK_BATCH_REQUESTS if ctx.quick else BATCH_REQUESTS
        batched = []
        for _ in range(ctx.runs):
            ctx.log(f"serving: {BATCH_SONGS:,} songs a request, {BATCH_CLIENTS} clients, {count} requests")
            wall, latencies = _load(port, batches, BATCH_CLIENTS, 600, count // BATCH_CLIENTS)
            batched.append((len(latencies) * BATCH_SONGS / wall, np.percentile(latencies, 50), len(latencies) / wall))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "clients": CLIENTS,
        "load_s": seconds,
        "one_song": {"requests_per_s": summary([r for r, _, _ in one_song]),
                     "p50_ms": summary([p50 * 1000 for _, p50, _ in one_song]),
                     "p99_ms": summary([p99 * 1000 for _, _, p99 in one_song])},
        "batch": {"songs": BATCH_SONGS, "clients": BATCH_CLIENTS, "requests": count,
                  "songs_per_s": summary([s for s, _, _ in batched]),
                  "requests_per_s": summary([r for _, _, r in batched]),
                  "p50_ms": summary([p50 * 1000 for _, p50, _ in batched])},
        "cli": {"rows": rows, "end_to_end_s": summary(cli), "rows_per_s": summary([rows / s for s in cli])},
        "targets": {"p99_ms": TARGET_P99_MS, "share_of_cli": TARGET_SHARE_OF_CLI},
    }


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"spotify-genre serve exited {server.returncode}: {server.stderr.read()[-500:]!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if connection.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError("spotify-genre serve was not ready within 120 s")


def serving_targets(results: dict) -> list[tuple[str, str, str, str]]:
    """The section's rows of the targets table: (measurement, measured, target, verdict)."""
    from bench.figures import at_most, fig, rate

    one, batch, cli, targets = results["one_song"], results["batch"], results["cli"], results["targets"]
    share = batch["songs_per_s"]["median"] / cli["rows_per_s"]["median"]
    wanted = targets["share_of_cli"]
    verdict = "met" if share >= wanted else f"**missed** by {wanted - share:.2f}× the CLI's rate"
    return [
        (f"`spotify-genre serve`, one song a request, {results['clients']} clients at once: p99 latency",
         f"{fig(one['p99_ms'], ' ms')}; {rate(one['requests_per_s'], ' requests/s')}",
         f"≤ {targets['p99_ms']:g} ms", at_most(one["p99_ms"]["median"], targets["p99_ms"], " ms")),
        (f"`spotify-genre serve`, {batch['songs']:,} songs a request, against predict's {cli['rows']:,} rows end to "
         "end", f"{rate(batch['songs_per_s'], ' songs/s')}, {share:.2f}× predict's "
         f"{cli['rows_per_s']['median']:,.0f} rows/s", f"≥ {wanted:g}× predict's rows/s", verdict),
    ]


def serving_markdown(results: dict) -> list[str]:
    from bench.figures import fig, rate

    one, batch, cli = results["one_song"], results["batch"], results["cli"]
    return [
        f"**Serving** (`spotify-genre serve`, one worker; asyncio clients with keep-alive; the raw dataset's songs):",
        "", "| load | requests/s | songs/s | p50 latency | p99 latency |", "| --- | --- | --- | --- | --- |",
        f"| one song a request, {results['clients']} clients at once, {results['load_s']:g} s | "
        f"{rate(one['requests_per_s'], '')} | {rate(one['requests_per_s'], '')} | {fig(one['p50_ms'], ' ms')} | "
        f"{fig(one['p99_ms'], ' ms')} |",
        f"| {batch['songs']:,} songs a request, {batch['clients']} clients, {batch['requests']} requests | "
        f"{fig(batch['requests_per_s'], '')} | {rate(batch['songs_per_s'], '')} | {fig(batch['p50_ms'], ' ms')} | |",
        f"| for comparison: `spotify-genre predict`, {cli['rows']:,} rows, end to end | | "
        f"{rate(cli['rows_per_s'], '')} | {fig(cli['end_to_end_s'])} (whole run) | |",
    ]
