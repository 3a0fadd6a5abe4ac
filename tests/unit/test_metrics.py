"""Metrics sinks: which ones open (pure choice), scalar filtering, TensorBoard event files, failing sinks dropped."""

from __future__ import annotations

import pytest

from tinyllm_ray.config import MetricsConfig
from tinyllm_ray.metrics import Sinks, TensorBoardSink, chosen_sinks, numeric, open_sinks, read_tensorboard_scalars


def everything_installed(_name: str) -> bool:
    return True


def nothing_installed(_name: str) -> bool:
    return False


@pytest.mark.parametrize("env,installed,expected", [
    ({}, everything_installed, ["tensorboard"]),  # auto needs configuration too
    ({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, everything_installed, ["tensorboard", "mlflow"]),
    ({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, nothing_installed, ["tensorboard"]),
    ({"WANDB_API_KEY": "k"}, everything_installed, ["tensorboard", "wandb"]),
    ({"WANDB_MODE": "offline", "MLFLOW_TRACKING_URI": "x"}, everything_installed, ["tensorboard", "mlflow", "wandb"]),
])
def test_auto_sinks_need_package_and_configuration(env, installed, expected):
    assert chosen_sinks(MetricsConfig(), env, installed) == expected


def test_explicit_sinks():
    config = MetricsConfig(tensorboard=False, mlflow=True, wandb=False)
    assert chosen_sinks(config, {}, everything_installed) == ["mlflow"]
    with pytest.raises(RuntimeError, match="pip install mlflow"):
        chosen_sinks(config, {}, nothing_installed)
    assert chosen_sinks(MetricsConfig(tensorboard=False, mlflow=False, wandb=False), {"WANDB_MODE": "x"},
                        everything_installed) == []


def test_numeric_keeps_scalars_only():
    assert numeric({"loss": 1, "lr": 0.5, "final": True, "nodes": ["a"], "resumed": None, "name": "x"}) == \
        {"loss": 1.0, "lr": 0.5}


def test_tensorboard_sink_writes_scalars(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.log({"loss": 2.5, "loss/answer": 1.0, "final": True}, step=3)
    sink.log({"loss": 1.5}, step=4)
    assert read_tensorboard_scalars(tmp_path) == {}, "buffered until the flush interval or close"
    sink.close()
    assert read_tensorboard_scalars(tmp_path) == {("loss", 3): 2.5, ("loss/answer", 3): 1.0, ("loss", 4): 1.5}


def test_tensorboard_sink_flushes_on_its_interval(tmp_path):
    sink = TensorBoardSink(tmp_path, flush_seconds=0)
    sink.log({"loss": 2.5}, step=1)
    assert read_tensorboard_scalars(tmp_path) == {("loss", 1): 2.5}
    sink.close()


def test_open_sinks_follows_config(tmp_path, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    sinks = open_sinks(MetricsConfig(), tmp_path / "tb", "job", "run")
    assert [type(s).__name__ for s in sinks.sinks] == ["TensorBoardSink"]
    sinks.close()
    assert open_sinks(MetricsConfig(tensorboard=False), tmp_path / "none", "job", "run").sinks == []


class Broken:
    closed = False

    def log(self, metrics, step):
        raise ConnectionError("tracking server down")

    def close(self):
        Broken.closed = True


class Recorder:
    def __init__(self):
        self.seen = []

    def log(self, metrics, step):
        self.seen.append((dict(metrics), step))

    def close(self):
        pass


def test_failing_sink_is_dropped_and_others_keep_logging():
    recorder = Recorder()
    sinks = Sinks([Broken(), recorder])
    sinks.log({"loss": 1.0}, step=1)
    sinks.log({"loss": 0.5}, step=2)
    assert [type(s) for s in sinks.sinks] == [Recorder]
    assert recorder.seen == [({"loss": 1.0}, 1), ({"loss": 0.5}, 2)]
    sinks.close()
