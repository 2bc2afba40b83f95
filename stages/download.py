"""The download stage: get the raw songs through the channel data.source names, check them, write them unchanged."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline import sources
from pipeline.artifacts import RAW_SONGS
from pipeline.params import load_params
from pipeline.timing import exit_with
from spotify_genre.atomic import write_with
from spotify_genre.errors import exits_cleanly


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m stages.download", description=__doc__).parse_args(argv)
    data = load_params().data
    source = sources.resolve(data, os.environ, Path.home())
    print(f"download: {source.describe(data)}", flush=True)
    songs = sources.acquire(source, data, os.environ, Path.home(), progress=sys.stderr.isatty())
    write_with(RAW_SONGS, lambda tmp: tmp.write_bytes(songs.csv))
    print(f"download: wrote {RAW_SONGS}: {songs.rows:,} songs, sha256 {songs.sha256}")
    return 0


if __name__ == "__main__":
    exit_with(main)
