"""Benchmarks of the pipeline (`make bench`, `python -m bench`): speed, training throughput, scaling, predict.

Everything runs in throwaway copies of the project under a temporary folder; the results go to
reports/bench.json and reports/bench.md. See `python -m bench --help`.
"""

import spotify_genre  # noqa: F401,E402  (the numerics pin, before any section imports numpy or torch)
