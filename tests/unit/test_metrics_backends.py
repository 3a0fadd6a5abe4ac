"""The MLflow and W&B sinks against the real packages, when they are installed (they are optional: not project
dependencies, so these tests skip where they are absent). MLflow logs to a local file store, W&B runs offline."""

from __future__ import annotations

import pytest

from tinyllm_ray.config import MetricsConfig
from tinyllm_ray.metrics import open_sinks

METRICS = [({"loss": 1.0, "loss/answer": 0.5, "final": False, "worker_nodes": ["n1"]}, 1),
           ({"loss": 0.25, "loss/answer": 0.125}, 2)]


def test_mlflow_sink_logs_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    sinks = open_sinks(MetricsConfig(tensorboard=False, mlflow="auto", wandb=False), tmp_path / "tb", "unit-job",
                       "unit-run", {"learning_rate": 0.001})
    assert [type(s).__name__ for s in sinks.sinks] == ["MlflowSink"]
    for metrics, step in METRICS:
        sinks.log(metrics, step)
    sinks.close()
    [run] = mlflow.search_runs(experiment_names=["unit-job"], output_format="list")
    assert run.info.run_name == "unit-run" and run.data.params == {"learning_rate": "0.001"}
    assert run.data.metrics == {"loss": 0.25, "loss_answer": 0.125}  # latest values; "/" is not allowed in keys
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.25)]


def test_wandb_sink_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = open_sinks(MetricsConfig(tensorboard=False, mlflow=False, wandb="auto"), tmp_path / "metrics",
                       "unit-job", "unit-run", {"learning_rate": 0.001})
    assert [type(s).__name__ for s in sinks.sinks] == ["WandbSink"]
    run = sinks.sinks[0].run
    for metrics, step in METRICS:
        sinks.log(metrics, step)
    assert run.name == "unit-run" and run.config["learning_rate"] == 0.001
    # W&B commits a step when the next one starts (or at finish): step 1 is in the summary by now
    assert dict(run.summary)["loss"] == 1.0 and "worker_nodes" not in dict(run.summary)
    sinks.close()
    [folder] = (tmp_path / "metrics" / "wandb").glob("offline-run-*")
    assert list(folder.glob("*.wandb"))
