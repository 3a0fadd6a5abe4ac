"""Where each stage reads and writes under ``output_dir``; one place so stages, sweeps and `inspect` agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """``root`` holds what every training run shares (problems, rationales); ``work`` what one run makes (student,
    Ray Train storage, evaluation, training metrics): the root itself, or a sweep trial's own folder."""

    root: Path
    work: Path

    @classmethod
    def of(cls, output_dir: str) -> "RunLayout":
        root = Path(output_dir).expanduser().resolve()
        return cls(root, root)

    def trial(self, name: str) -> "RunLayout":
        """The layout of one sweep trial: shared problems and rationales, its own student and evaluation."""
        return RunLayout(self.root, self.sweep / "trials" / name)

    @property
    def config(self) -> Path:
        return self.work / "config.yaml"

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
        return self.work / "student"

    @property
    def train_storage(self) -> Path:
        return self.work / "ray_train"

    @property
    def evaluation(self) -> Path:
        return self.work / "evaluation"

    @property
    def teacher_answers(self) -> Path:
        """Teachers' answers to the eval split, for their accuracy: shared, as they do not depend on a student."""
        return self.root / "evaluation" / "teacher_answers"

    @property
    def metrics(self) -> Path:
        """TensorBoard event files: ``generate/<teacher>`` under the root, ``train`` under each run's work folder."""
        return self.work / "metrics"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"
