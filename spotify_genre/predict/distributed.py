"""The same per-shard prediction on Dask workers (the `dask` extra), for catalogues too large for one machine.

Each shard is one task, run on a worker by predict_stream exactly as in one process, so the output shards are the
same bytes; every worker needs the input, output, model and preprocessor paths (a shared file system). Workers
must start with the numerics pin in their environment, as numpy and torch read it when they load (dask loads numpy
before any task runs): start them with
`python -m spotify_genre.predict.distributed worker SCHEDULER [dask worker options]`, which puts the pin in place and then runs `dask worker`. A worker started otherwise refuses the task.

`--dask ADDRESS` takes a scheduler's address (tcp://host:8786), or `local[:N]` for a cluster of N worker processes
on 127.0.0.1 (one per core by default).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from spotify_genre import numerics
from spotify_genre.errors import ParamsError, PipelineError
from spotify_genre.predict.predictor import Outcome, Predictor, Settings, predict_stream
from spotify_genre.predict.shards import Shard

LOCAL = "local"
_PREDICTORS: dict[Settings, Predictor] = {}  # a worker process's, kept across tasks


def _started_pinned() -> bool:
    """Whether this process started with the pin's settings in its environment, so that the libraries that read
    them when they load (numpy before any task here) read them; True where that cannot be told."""
    if numerics.mode() == "native" or not numerics.applies():
        return True
    try:
        initial = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return True
    environment = dict(item.split(b"=", 1) for item in initial if b"=" in item)
    return all(environment.get(name.encode()) == value.encode() for name, value in numerics.PINNED.items())


def predict_shard(shard: Shard, settings: Settings) -> tuple[Outcome, list[str]]:
    """One shard, on a worker: its outcome and the lines it would have written to stderr."""
    if not _started_pinned():
        raise PipelineError("a dask worker started without the numerics pin, so its numpy and torch may round "
                            "otherwise than this machine's; start workers with `python -m "
                            "spotify_genre.predict.distributed worker SCHEDULER`")
    predictor = _PREDICTORS.get(settings)
    if predictor is None:
        predictor = _PREDICTORS[settings] = Predictor(settings)
    lines: list[str] = []
    outcome = predict_stream(shard.source, shard.target, shard.fmt, predictor, lines.append)
    return outcome, lines


def _absolute(shard: Shard) -> Shard:
    return Shard(str(Path(shard.source).resolve()), str(Path(shard.target).resolve()), shard.fmt)


@contextlib.contextmanager
def _client(address: str) -> Iterator[object]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ParamsError("--dask needs Dask: from a clone, pip install -e '.[dask]' (or `make install`)") from None
    if address == LOCAL or address.startswith(f"{LOCAL}:"):
        count = address.partition(":")[2]
        if count and not (count.isdigit() and int(count) >= 1):
            raise ParamsError(f"--dask {address}: expected local or local:N, N a number of workers (1 or more)")
        workers = int(count) if count else len(os.sched_getaffinity(0))
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as error:
        raise PipelineError(f"--dask {address}: cannot reach the scheduler ({error})") from None
    with client:
        yield client


def predict_on_dask(address: str, shards: list[Shard], settings: Settings, log: Callable[[str], None]) -> list[Outcome]:
    """Every shard as one task on the cluster at `address`; messages and the first error in shard order."""
    settings = Settings(str(Path(settings.model).resolve()), str(Path(settings.preprocessor).resolve()),
                        settings.top_k, settings.skip_invalid, settings.chunk_rows)
    outcomes: list[Outcome] = []
    if not shards:
        return outcomes
    with _client(address) as client:
        futures = [client.submit(predict_shard, _absolute(shard), settings, pure=False) for shard in shards]
        try:
            for shard, future in zip(shards, futures):
                outcome, lines = future.result()
                for line in lines:
                    log(line)
                log(f"{shard.source}: {outcome.predicted} songs predicted into {shard.target}")
                outcomes.append(outcome)
        finally:
            client.cancel(futures)
    return outcomes


def _worker(argv: list[str]) -> None:
    """`dask worker ARGS` in this process's place, with the pin (set when spotify_genre was imported) in its
    environment."""
    os.execv(sys.executable, [sys.executable, "-m", "distributed.cli.dask_worker", *argv])


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m spotify_genre.predict.distributed worker SCHEDULER [dask worker options]")
    _worker(sys.argv[2:])
