"""Where each stage reads and writes under ``output_dir``; one place so stages, sweeps and `inspect` agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"  # written last into every artifact folder: the folder is complete iff it exists
PROGRESS = "_progress.json"  # a teacher folder's started-generation marker: fingerprint and shard size


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

    def imported_rationales(self, teacher: str) -> Path:
        """An imported teacher's validated rationales, read by its actors (``teachers/imported.py``)."""
        return self.root / "imports" / f"{teacher}.parquet"

    @staticmethod
    def shard_file(out_dir: Path, shard: int) -> Path:
        """Shard ``shard`` of a teacher's output folder (rationales or eval answers)."""
        return out_dir / f"shard-{shard:06d}.parquet"

    @staticmethod
    def progress_file(out_dir: Path) -> Path:
        return out_dir / PROGRESS

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
    def report_json(self) -> Path:
        return self.evaluation / "report.json"

    @property
    def report_md(self) -> Path:
        return self.evaluation / "report.md"

    @property
    def teacher_answers(self) -> Path:
        """Teachers' answers to the eval split, for their accuracy: shared, as they do not depend on a student."""
        return self.root / "evaluation" / "teacher_answers"

    @property
    def metrics(self) -> Path:
        """TensorBoard event files: ``generate/<teacher>`` under the root, ``train`` under each run's work folder."""
        return self.work / "metrics"

    @property
    def logs(self) -> Path:
        """``console.log``: what a command printed besides its own lines (:mod:`tinyllm_ray.console`)."""
        return self.root / "logs"

    @property
    def report_html(self) -> Path:
        """`tinyllm-ray report`'s page for the run or sweep at the root (charts embedded)."""
        return self.root / "report.html"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    def sweep_results(self, suffix: str) -> Path:
        """``results.{json,csv,md,png}`` of the sweep."""
        return self.sweep / f"results.{suffix}"
