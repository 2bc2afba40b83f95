"""Experiments beyond one pipeline run, run from a clone: the Optuna study over the MLP (`python -m experiments.tune`,
with study, space and study_report), and the table of the pipeline over several split seeds
(`python -m experiments.seeds`, after `make seeds`).

Not installed. Importing this package imports `spotify_genre` first, which pins the numerics before any module
loads numpy or torch.
"""

import spotify_genre  # noqa: F401
