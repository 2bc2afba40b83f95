"""What the stages, the experiment tools and bench share to fit and report, on top of the `spotify_genre` library:
params.yaml's typed model (params), every stage's hand-off and its one reader (artifacts), acquiring the songs
(sources, synthetic), the split rule (splitting), fitting the preprocessor (preprocessor_fitting) and the MLP
(mlp_fitting, subgenres), the baselines' models (peers), scores and intervals (metrics, bootstrap), reports and
figures (report), and the tools run as child processes (tools).

Run from the repository root; not installed. Importing this package imports `spotify_genre` first, which pins
the numerics before any module loads numpy or torch.
"""

import spotify_genre  # noqa: F401
