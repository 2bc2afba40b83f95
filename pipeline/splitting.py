"""The split rule: the groups a split keeps whole (split.group_by), and the side each group lands on, train, val or
test, by a stable hash of the seed and the group's key.

Shared by the split stage, which assigns whole groups to train, val or test, and the preprocess stage, which
cross-fits its text scores by the same groups, so that a training row is never scored by a model that saw its
group, just as a test row never is.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.params import SplitParams
from spotify_genre.songs.schema import TRACK_ID

GROUP_BY = ("track_id", "track_artist")


def group_keys(songs: pd.DataFrame, group_by: str) -> pd.Series:
    """Each row's group as a string.

    track_artist: the artist of the row's track (its first named artist, so a track is never cut in two), or
    `track:<track_id>` for a track with no artist named in any row.
    """
    tracks = songs[TRACK_ID].astype("str")
    if group_by == "track_id":
        return tracks
    if group_by != "track_artist":
        raise ValueError(f"unknown grouping {group_by!r}; expected one of {', '.join(GROUP_BY)}")
    artists = songs[group_by].groupby(tracks, sort=False).transform("first")
    return ("artist:" + artists.astype("str")).where(artists.notna(), "track:" + tracks)


METHOD = ("u = first 8 bytes of sha256('<seed>:<group>') / 2**64; "
          "test if u < test_size, val if u < test_size + val_size, else train")


def track_fractions(keys: pd.Series, seed: int) -> np.ndarray:
    """Each row's uniform [0, 1) draw, a pure function of (seed, key): the key is a track id or a group key."""
    codes, unique = pd.factorize(keys, sort=False)
    draws = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
                      for key in unique], dtype=np.float64) / 2.0**64
    return draws[codes]


def assign_splits(keys: pd.Series, params: SplitParams) -> np.ndarray:
    """'train', 'val' or 'test' for every row, from its group key (its track id when grouping by track)."""
    u = track_fractions(keys, params.seed)
    return np.where(u < params.test_size, "test",
                    np.where(u < params.test_size + params.val_size, "val", "train"))
