"""The DVC pipeline's stages: one entry module per stage of dvc.yaml (`python -m stages.X`), its main() and the glue
only it uses, on top of the fit-side code they share (`pipeline/`) and the `spotify_genre` library.

Run from the repository root; not installed. Importing this package imports `spotify_genre` first, which pins
the numerics before any stage loads numpy or torch.
"""

import spotify_genre  # noqa: F401
