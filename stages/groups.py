"""The groups a split keeps whole: every row of a group lands on the same side (split.group_by).

Shared by the split stage, which assigns whole groups to train, val or test, and the preprocess stage, which
cross-fits its text scores by the same groups, so that a training row is never scored by a model that saw its
group, just as a test row never is.
"""

from __future__ import annotations

import pandas as pd

from spotify_genre.schema import TRACK_ID

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
