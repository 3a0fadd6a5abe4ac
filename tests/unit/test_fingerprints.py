"""What each artifact's fingerprint covers is declared next to the config fields: new fields count by default."""

from __future__ import annotations

import warnings

import pytest
from pydantic import Field

from tinyllm_ray.config import (
    OPERATIONAL, UNLESS_DEFAULT, EngineConfig, ResourceConfig, Strict, fingerprint_view, load_config,
)
from tinyllm_ray.problems import problems_fingerprint


def test_problems_fingerprint_is_unchanged_for_the_presets():
    # Values written by runs before the fingerprint marks existed: their problems folders stay reusable.
    assert problems_fingerprint(load_config("tiny")) == "753004d0cd357edf"
    assert problems_fingerprint(load_config("demo")) == "8c7153d997e6585b"


def test_a_new_field_counts_unless_it_is_marked():
    class Section(Strict):
        counted: int = 1
        new_setting: str = "x"
        how_it_runs: int = Field(2, json_schema_extra=OPERATIONAL)
        added_later: str = Field("old", json_schema_extra=UNLESS_DEFAULT)

    assert fingerprint_view(Section()) == {"counted": 1, "new_setting": "x"}
    assert fingerprint_view(Section(how_it_runs=5)) == fingerprint_view(Section())
    assert fingerprint_view(Section(added_later="new"))["added_later"] == "new"


def test_engine_settings_that_change_outputs_count():
    view = fingerprint_view(EngineConfig())
    assert {"dtype", "max_model_len", "extra"} <= set(view)
    assert not {"tensor_parallel_size", "gpu_memory_utilization", "kv_cache_memory_bytes", "allocator"} & set(view)


def test_operational_training_settings_do_not_count():
    job = load_config("tiny")
    changed = load_config("tiny", ["training.log_every_steps=7", "training.max_failures=0",
                                   "training.length_groups=1"])
    assert fingerprint_view(job.training) == fingerprint_view(changed.training)
    assert fingerprint_view(job.training) != fingerprint_view(load_config("tiny", ["training.seed=1"]).training)


def test_student_inputs_stay_out_of_the_rationale_fingerprint():
    job = load_config("tiny", ["prompts.task_prefix=answer-> ", "teachers.tiny_a.rationale_prefix=why-> "])
    base = load_config("tiny")
    assert fingerprint_view(job.prompts) == fingerprint_view(base.prompts)
    assert fingerprint_view(job.teachers[0]) == fingerprint_view(base.teachers[0])


def test_old_batch_size_key_loads_as_shard_size_with_a_warning():
    with pytest.warns(FutureWarning, match="shard_size"):
        resources = ResourceConfig.model_validate({"batch_size": 4})
    assert resources.shard_size == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ResourceConfig(shard_size=3).shard_size == 3
    with pytest.raises(ValueError, match="shard_size only"):
        ResourceConfig.model_validate({"batch_size": 4, "shard_size": 4})

