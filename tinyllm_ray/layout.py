"""Where each stage reads and writes under ``output_dir``; one place so stages and `inspect` agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, output_dir: str) -> "RunLayout":
        return cls(Path(output_dir).expanduser().resolve())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def problems(self) -> Path:
        return self.root / "problems"

    def problem_file(self, role: str) -> Path:
        return self.problems / f"{role}.parquet"

    @property
    def rationales(self) -> Path:
        return self.root / "rationales"

    def teacher_dir(self, teacher: str) -> Path:
        return self.rationales / teacher

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def train_storage(self) -> Path:
        return self.root / "ray_train"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"
