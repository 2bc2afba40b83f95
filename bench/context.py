"""What every section gets: where to work, how many runs, the dataset, and projects prepared once and shared."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.project import Dataset, plain_project, run_stage, stage_order, upstream


@dataclass
class Context:
    workdir: Path  # a temporary folder, removed at the end unless `keep`
    runs: int  # measured runs behind each figure
    quick: bool
    dataset: Dataset
    keep: bool = False
    _ran: set[str] = field(default_factory=set)  # the stages already run in the shared project

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def prepared(self, upto: str) -> Path:
        """The shared project (no Git, no DVC; the dataset, default params) where `upto` and its inputs have run."""
        project = self.workdir / "prepared"
        if not project.exists():
            plain_project(project, self.dataset)
        missing = [stage for stage in stage_order() if stage in upstream(upto) - self._ran]
        if missing:
            self.log(f"preparing {', '.join(missing)} in {project}")
        for stage in missing:
            run_stage(project, stage)
            self._ran.add(stage)
        return project
