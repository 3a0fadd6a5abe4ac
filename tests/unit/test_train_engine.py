"""The one-rank collectives skip (gradient all-reduce, clipping norm): when it applies, and that it leaves training
bit-identical with no collective left (a real DeepSpeed engine, world size 1, gloo, on a small torch model in this
process)."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from tinyllm_ray.train_worker import skip_single_rank_collectives


def fake_engine(stage=0, dp=1, optimizer=None):
    return SimpleNamespace(zero_optimization_stage=lambda: stage, dp_world_size=dp, seq_dp_world_size=dp,
                           mp_world_size=1, optimizer=optimizer if optimizer is not None else object(),
                           enable_backward_allreduce=True)


def test_skip_applies_only_to_zero0_one_rank_plain_optimizer():
    from deepspeed.runtime.base_optimizer import DeepSpeedOptimizer

    engine = fake_engine()
    assert skip_single_rank_collectives(engine) and engine.enable_backward_allreduce is False
    for engine in (fake_engine(stage=1), fake_engine(stage=2), fake_engine(stage=3), fake_engine(dp=2),
                   fake_engine(optimizer=DeepSpeedOptimizer())):
        assert not skip_single_rank_collectives(engine)
        assert engine.enable_backward_allreduce is True


@pytest.fixture
def one_rank_group(monkeypatch):
    import deepspeed
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    created = not dist.is_initialized()
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _train(skip: bool, steps: int = 3):
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 4,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    assert skip_single_rank_collectives(engine) if skip else engine.enable_backward_allreduce
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps * 2):  # two micro-batches per optimiser step
        x = torch.randn(2, 16, generator=generator)
        loss = engine(x).pow(2).mean() * 10  # large enough for clipping to act
        engine.backward(loss)
        engine.step()
    assert engine.global_steps == steps
    return [p.detach().clone() for p in engine.module.parameters()]


def test_skipping_the_one_rank_collectives_trains_identically(one_rank_group, monkeypatch):
    import torch.distributed as dist

    assert os.environ["WORLD_SIZE"] == "1"
    calls = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: calls.append(1) or all_reduce(*a, **k))
    reference = _train(skip=False)
    assert calls, "DeepSpeed all-reduces with one rank unless skipped"
    calls.clear()
    skipped = _train(skip=True)
    assert not calls
    for a, b in zip(reference, skipped):
        assert a.equal(b)
