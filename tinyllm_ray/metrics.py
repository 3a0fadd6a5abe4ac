"""Metrics sinks: TensorBoard always (event files written with tensorboardX, a dependency), MLflow and W&B when
installed and configured.

A sink is the seam between the recipes and whatever tracks experiments: ``log(metrics, step)`` and ``close()``.
Training logs from rank 0 of the Ray Train workers, generation from the driver as shards finish. Choosing the sinks
(:func:`chosen_sinks`) is pure; opening them imports the packages lazily.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tinyllm_ray.config import MetricsConfig

log = logging.getLogger("tinyllm_ray")


class MetricsSink(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def chosen_sinks(config: MetricsConfig, env: Mapping[str, str] | None = None,
                 installed=_installed) -> list[str]:
    """Which sinks to open: ``auto`` means installed *and* configured (a tracking URI / API key or mode is set),
    so a laptop never starts writing ./mlruns or prompting for a W&B login by surprise."""
    env = os.environ if env is None else env
    configured = {"mlflow": "MLFLOW_TRACKING_URI" in env, "wandb": "WANDB_API_KEY" in env or "WANDB_MODE" in env}
    sinks = ["tensorboard"] if config.tensorboard else []
    for name in ("mlflow", "wandb"):
        setting = getattr(config, name)
        if setting is True:
            if not installed(name):
                raise RuntimeError(f"metrics.{name} is true but the {name!r} package is not installed: "
                                   f"pip install {name} (or set metrics.{name}: auto)")
            sinks.append(name)
        elif setting == "auto" and configured[name] and installed(name):
            sinks.append(name)
    return sinks


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of a report (flags, ids and None values are left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Event files written by the calling thread: one event per step holding all its scalars, written out every
    ``flush_seconds`` and on close.

    tensorboardX's ``SummaryWriter`` hands each scalar to a writer thread through a ``multiprocessing.Queue`` (a
    feeder thread, a pipe, pickling, a pure-Python CRC): two thread wake-ups per scalar, which preempt a training
    thread with short steps. Its synchronous ``EventsWriter`` (the same file format) wakes nothing
    (benchmarks/RESULTS.md, ``benchmarks.train_breakdown``).
    """

    def __init__(self, log_dir: Path, flush_seconds: float = 10.0):
        from tensorboardX.event_file_writer import EventsWriter

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.writer = EventsWriter(str(Path(log_dir) / "events"))
        self.flush_seconds = flush_seconds
        self.flushed_at = time.monotonic()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=key, simple_value=value) for key, value in numeric(metrics).items()]
        self.writer.write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        if time.monotonic() - self.flushed_at >= self.flush_seconds:
            self.writer.flush()
            self.flushed_at = time.monotonic()

    def close(self) -> None:
        self.writer.close()


def read_tensorboard_scalars(folder: Path) -> dict[tuple[str, int], float]:
    """Every scalar in a folder's event files, as {(tag, step): value}: for tests and quick looks without
    TensorBoard (TFRecord framing: 8-byte length, 4-byte crc, an Event proto, 4-byte crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12:12 + length])
            data = data[12 + length + 4:]
            scalars.update({(v.tag, event.step): v.simple_value for v in event.summary.value})
    return scalars


class MlflowSink:
    def __init__(self, experiment: str, run_name: str, params: Mapping[str, Any]):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in numeric(metrics).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbSink:
    def __init__(self, project: str, run_name: str, params: Mapping[str, Any], log_dir: Path):
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name, config=dict(params), dir=str(log_dir), reinit=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """All chosen sinks behind one ``log``/``close``; a sink that fails to log is reported once and dropped, so
    a tracking server outage never stops training."""

    def __init__(self, sinks: list[MetricsSink]):
        self.sinks = sinks

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for sink in list(self.sinks):
            try:
                sink.log(metrics, step)
            except Exception as err:  # noqa: BLE001 - metrics are best effort, training is not
                log.warning("metrics sink %s failed, dropping it: %s", type(sink).__name__, err)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001
                log.warning("metrics sink %s did not close cleanly: %s", type(sink).__name__, err)


def open_sinks(config: MetricsConfig, log_dir: Path, experiment: str, run_name: str,
               params: Mapping[str, Any] | None = None) -> Sinks:
    """Open every chosen sink; TensorBoard event files go to ``log_dir``."""
    params = params or {}
    opened: list[MetricsSink] = []
    for name in chosen_sinks(config):
        if name == "tensorboard":
            opened.append(TensorBoardSink(log_dir))
        elif name == "mlflow":
            opened.append(MlflowSink(config.experiment or experiment, run_name, params))
        elif name == "wandb":
            opened.append(WandbSink(config.experiment or experiment, run_name, params, log_dir))
    return Sinks(opened)
