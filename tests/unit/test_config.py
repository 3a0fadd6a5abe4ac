"""Typed job config: presets, strict keys with dotted paths, overrides, cross-field checks, round trips."""

from __future__ import annotations

import copy

import pytest
import yaml

from tinyllm_ray.config import (
    ConfigError,
    JobConfig,
    apply_override,
    config_to_yaml,
    load_config,
    preset_names,
    stable_hash,
)

BASE = {
    "name": "unit",
    "teachers": [
        {"name": "tiny_a", "model": "builtin:tiny-llama", "rationale_prefix": "explain: "},
        {"name": "tiny_b", "model": "builtin:tiny-llama", "rationale_prefix": "rationale: "},
    ],
    "student": {"model": "builtin:tiny-llama"},
}


def raw(**changes) -> dict:
    out = copy.deepcopy(BASE)
    out.update(copy.deepcopy(changes))
    return out


def write_yaml(tmp_path, payload: dict, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return str(path)


def load_raw(tmp_path, payload: dict, overrides=()) -> JobConfig:
    return load_config(write_yaml(tmp_path, payload), overrides)


# ---------------------------------------------------------------- presets and sources

def test_preset_names_include_shipped_presets():
    names = preset_names()
    assert {"demo", "tiny"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    config = load_config(name)
    assert isinstance(config, JobConfig)
    assert config.name == name
    assert len(config.teachers) >= 1
    # Every preset must be self-consistent with its own round trip.
    assert JobConfig.model_validate(yaml.safe_load(config_to_yaml(config))) == config


def test_tiny_preset_values():
    config = load_config("tiny")
    assert [t.name for t in config.teachers] == ["tiny_a", "tiny_b"]
    assert config.prompts.num_demos == 1
    assert config.training.max_steps == 3
    assert config.teachers[1].sampling.temperature == pytest.approx(0.8)
    assert config.teachers[1].sampling.seed == 3


def test_load_config_from_yaml_file(tmp_path):
    config = load_raw(tmp_path, raw(training={"zero_stage": 3, "learning_rate": 1e-4}))
    assert config.name == "unit"
    assert config.training.zero_stage == 3
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.student.model == "builtin:tiny-llama"


def test_load_config_nonexistent_source(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a preset") as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "tiny" in str(info.value)  # lists the presets


def test_load_config_non_mapping_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path))


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


# ---------------------------------------------------------------- strictness

def test_unknown_top_level_key_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_raw(tmp_path, raw(trainig={"epochs": 2}))
    message = str(info.value)
    assert "trainig" in message and "unknown key" in message
    assert "job.yaml" in message  # names the file


def test_unknown_nested_key_named_with_dotted_path(tmp_path):
    payload = raw()
    payload["teachers"][0]["sampling"] = {"foo": 1}
    with pytest.raises(ConfigError) as info:
        load_raw(tmp_path, payload)
    assert "teachers.0.sampling.foo" in str(info.value)
    assert "unknown key" in str(info.value)


def test_unknown_key_via_override_named(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.epochz"):
        load_raw(tmp_path, raw(), ["training.epochz=2"])


def test_negative_temperature_names_key(tmp_path):
    payload = raw()
    payload["teachers"][1]["sampling"] = {"temperature": -0.5}
    with pytest.raises(ConfigError) as info:
        load_raw(tmp_path, payload)
    assert "teachers.1.sampling.temperature" in str(info.value)


def test_zero_stage_5_names_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_raw(tmp_path, raw(training={"zero_stage": 5}))
    assert "training.zero_stage" in str(info.value)


def test_missing_required_student(tmp_path):
    payload = raw()
    del payload["student"]
    with pytest.raises(ConfigError, match="student"):
        load_raw(tmp_path, payload)


def test_empty_teachers_rejected(tmp_path):
    with pytest.raises(ConfigError, match="teachers"):
        load_raw(tmp_path, raw(teachers=[]))


def test_bad_teacher_name_pattern(tmp_path):
    payload = raw()
    payload["teachers"][0]["name"] = "has space"
    with pytest.raises(ConfigError, match=r"teachers\.0\.name"):
        load_raw(tmp_path, payload)


def test_data_path_required_for_file_formats(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        load_raw(tmp_path, raw(data={"format": "jsonl"}))


def test_duplicate_teacher_names(tmp_path):
    payload = raw()
    payload["teachers"][1]["name"] = "tiny_a"
    with pytest.raises(ConfigError, match="unique") as info:
        load_raw(tmp_path, payload)
    assert "tiny_a" in str(info.value)


def test_colliding_teacher_prefixes(tmp_path):
    payload = raw()
    payload["teachers"][1]["rationale_prefix"] = "explain: "
    with pytest.raises(ConfigError, match="prefix"):
        load_raw(tmp_path, payload)


def test_teacher_prefix_colliding_with_task_prefix(tmp_path):
    with pytest.raises(ConfigError, match="prefix"):
        load_raw(tmp_path, raw(prompts={"task_prefix": "explain: "}))


def test_alpha_naming_unknown_teacher(tmp_path):
    with pytest.raises(ConfigError, match="training.alpha") as info:
        load_raw(tmp_path, raw(training={"alpha": {"tiny_a": 0.5, "ghost": 1.0}}))
    assert "ghost" in str(info.value)


def test_training_teachers_naming_unknown_teacher(tmp_path):
    with pytest.raises(ConfigError, match="training.teachers") as info:
        load_raw(tmp_path, raw(training={"teachers": ["ghost"]}))
    assert "ghost" in str(info.value)


def test_negative_alpha_rejected(tmp_path):
    with pytest.raises(ConfigError, match="training.alpha"):
        load_raw(tmp_path, raw(training={"alpha": {"tiny_a": -1.0}}))


def test_tensor_parallel_without_gpus(tmp_path):
    payload = raw()
    payload["teachers"][0]["engine"] = {"tensor_parallel_size": 2}
    with pytest.raises(ConfigError, match="tensor_parallel_size") as info:
        load_raw(tmp_path, payload)
    assert "teachers.0" in str(info.value)


def test_tensor_parallel_must_match_gpus(tmp_path):
    payload = raw()
    payload["teachers"][0]["engine"] = {"tensor_parallel_size": 2}
    payload["teachers"][0]["resources"] = {"num_gpus_per_actor": 4}
    with pytest.raises(ConfigError, match="num_gpus_per_actor"):
        load_raw(tmp_path, payload)
    payload["teachers"][0]["resources"] = {"num_gpus_per_actor": 2}
    config = load_raw(tmp_path, payload)
    assert config.teachers[0].engine.tensor_parallel_size == 2


def test_an_object_store_output_dir_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="mount an object store") as info:
        load_raw(tmp_path, {**raw(), "output_dir": "s3://bucket/runs/tiny"})
    assert "output_dir" in str(info.value)
    assert load_raw(tmp_path, {**raw(), "output_dir": "/mnt/shared/runs/tiny"}).output_dir == "/mnt/shared/runs/tiny"


def test_pipeline_parallel_counts_in_the_gpus_an_actor_needs(tmp_path):
    payload = raw()
    payload["teachers"][0]["engine"] = {"tensor_parallel_size": 2, "extra": {"pipeline_parallel_size": 2}}
    payload["teachers"][0]["resources"] = {"num_gpus_per_actor": 2}
    with pytest.raises(ConfigError, match=r"pipeline_parallel_size \(2\) = 4"):
        load_raw(tmp_path, payload)
    payload["teachers"][0]["resources"] = {"num_gpus_per_actor": 4}
    assert load_raw(tmp_path, payload).teachers[0].engine.gpus_per_engine == 4
    payload["teachers"][0]["engine"] = {"extra": {"pipeline_parallel_size": 2}}
    payload["teachers"][0]["resources"] = {}
    with pytest.raises(ConfigError, match="needs resources.num_gpus_per_actor set to 2"):
        load_raw(tmp_path, payload)
    payload["teachers"][0]["engine"] = {"extra": {"pipeline_parallel_size": "two"}}
    with pytest.raises(ConfigError, match="whole number"):
        load_raw(tmp_path, payload)


# ---------------------------------------------------------------- helpers on the config

def test_alpha_for_defaults_to_one(tmp_path):
    config = load_raw(tmp_path, raw(training={"alpha": {"tiny_a": 0.25}}))
    assert config.alpha_for("tiny_a") == pytest.approx(0.25)
    assert config.alpha_for("tiny_b") == 1.0


def test_distilled_teachers_default_all_and_subset(tmp_path):
    config = load_raw(tmp_path, raw())
    assert [t.name for t in config.distilled_teachers()] == ["tiny_a", "tiny_b"]
    subset = load_raw(tmp_path, raw(training={"teachers": ["tiny_b"]}))
    assert [t.name for t in subset.distilled_teachers()] == ["tiny_b"]


# ---------------------------------------------------------------- overrides

def test_override_scalar_types(tmp_path):
    config = load_raw(tmp_path, raw(), [
        "training.epochs=3",
        "training.learning_rate=1.0e-4",
        "training.use_gpu=true",
        "evaluation.teachers=false",
        "name=renamed",
    ])
    assert config.training.epochs == 3 and type(config.training.epochs) is int
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.training.use_gpu is True
    assert config.evaluation.teachers is False
    assert config.name == "renamed"


def test_override_parses_yaml_values_in_raw_dict():
    data: dict = {}
    apply_override(data, "a.int=7")
    apply_override(data, "a.float=0.5")
    apply_override(data, "a.bool=True")
    apply_override(data, "a.list=[1, two, 3.5]")
    apply_override(data, "a.map={x: 1}")
    apply_override(data, "a.text=hello world")
    apply_override(data, "a.eq=x=y")  # only the first '=' splits
    apply_override(data, "a.none=null")
    assert data == {"a": {
        "int": 7, "float": 0.5, "bool": True, "list": [1, "two", 3.5], "map": {"x": 1},
        "text": "hello world", "eq": "x=y", "none": None,
    }}
    assert type(data["a"]["int"]) is int and type(data["a"]["float"]) is float


def test_override_list_value(tmp_path):
    config = load_raw(tmp_path, raw(), ["training.teachers=[tiny_a]"])
    assert [t.name for t in config.distilled_teachers()] == ["tiny_a"]


def test_override_list_index(tmp_path):
    config = load_raw(tmp_path, raw(), ["teachers.1.sampling.temperature=0.3", "teachers.-2.sampling.max_tokens=9"])
    assert config.teachers[1].sampling.temperature == pytest.approx(0.3)
    assert config.teachers[0].sampling.max_tokens == 9
    assert config.teachers[0].sampling.temperature == 0.0


def test_override_list_item_by_name(tmp_path):
    config = load_raw(tmp_path, raw(), ["teachers.tiny_a.sampling.temperature=0.5"])
    assert config.teachers[0].sampling.temperature == pytest.approx(0.5)
    assert config.teachers[1].sampling.temperature == 0.0


def test_override_by_name_on_preset():
    config = load_config("tiny", ["teachers.tiny_b.sampling.temperature=0.5", "training.alpha={tiny_a: 0.1}"])
    assert config.teachers[1].sampling.temperature == pytest.approx(0.5)
    assert config.alpha_for("tiny_a") == pytest.approx(0.1)
    assert config.alpha_for("tiny_b") == 1.0


def test_override_does_not_mutate_shipped_preset():
    load_config("tiny", ["training.max_steps=7"])
    assert load_config("tiny").training.max_steps == 3


@pytest.mark.parametrize("override, pattern", [
    ("training.epochs", "key.path=value"),
    ("=3", "empty key"),
    ("teachers.5.sampling.temperature=0.5", "out of range"),
    ("teachers.-3.model=x", "out of range"),
    ("teachers.ghost.sampling.temperature=0.5", "ghost"),
    ("name.sub=1", "not a mapping or list"),
])
def test_bad_overrides_raise_config_error(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_raw(tmp_path, raw(), [override])


def test_bad_override_value_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_raw(tmp_path, raw(), ["training.epochs=zero"])


# ---------------------------------------------------------------- serialisation and hashing

def test_config_to_yaml_round_trips(tmp_path):
    config = load_raw(tmp_path, raw(
        training={"alpha": {"tiny_a": 0.5}, "teachers": ["tiny_a"], "zero_stage": 3, "dtype": "bf16"},
        data={"format": "jsonl", "path": "/data/x", "fields": {"context": "ctx"}},
    ), ["teachers.tiny_b.engine.extra={swap_space: 1}"])
    text = config_to_yaml(config)
    again = load_config(write_yaml(tmp_path, yaml.safe_load(text), "again.yaml"))
    assert again == config
    assert config_to_yaml(again) == text
    assert again.teachers[1].engine.extra == {"swap_space": 1}


def test_stable_hash_order_independent_and_value_sensitive():
    a = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    b = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert stable_hash(a) == stable_hash(b)
    assert len(stable_hash(a)) == 16
    assert stable_hash(a) != stable_hash({"x": 2, "y": {"p": [1, 2], "q": "s"}})
    assert stable_hash(a) != stable_hash({"x": 1, "y": {"p": [2, 1], "q": "s"}})  # list order matters


def test_stable_hash_of_config_changes_with_override():
    base = load_config("tiny").model_dump(mode="json")
    same = load_config("tiny").model_dump(mode="json")
    changed = load_config("tiny", ["training.learning_rate=2e-3"]).model_dump(mode="json")
    assert stable_hash(base) == stable_hash(same)
    assert stable_hash(base) != stable_hash(changed)


def test_sampling_stop_override_list():
    config = load_config("tiny", ["teachers.tiny_a.sampling.stop=['###', END]"])
    assert config.teachers[0].sampling.stop == ["###", "END"]


# ---------------------------------------------------------------- placement, metrics and sweep keys

def test_custom_resources_for_teachers_and_trainers(tmp_path):
    teachers = copy.deepcopy(BASE["teachers"])
    teachers[0]["resources"] = {"custom_resources": {"tinyllm_teacher": 1}}
    config = load_raw(tmp_path, raw(teachers=teachers, training={
        "custom_resources_per_worker": {"tinyllm_trainer": 1}, "placement_strategy": "SPREAD"}))
    assert config.teachers[0].resources.custom_resources == {"tinyllm_teacher": 1.0}
    assert config.training.custom_resources_per_worker == {"tinyllm_trainer": 1.0}


@pytest.mark.parametrize("resources,message", [
    ({"GPU": 1}, "not a custom resource"),
    ({"tinyllm_trainer": 0}, "must be > 0"),
])
def test_bad_custom_resources_rejected(tmp_path, resources, message):
    with pytest.raises(ConfigError, match="training.custom_resources_per_worker") as info:
        load_raw(tmp_path, raw(training={"custom_resources_per_worker": resources}))
    assert message in str(info.value)


def test_placement_strategy_and_data_fraction_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="training.placement_strategy"):
        load_raw(tmp_path, raw(training={"placement_strategy": "ANYWHERE"}))
    with pytest.raises(ConfigError, match="training.data_fraction"):
        load_raw(tmp_path, raw(training={"data_fraction": 0}))


def test_metrics_section(tmp_path):
    config = load_raw(tmp_path, raw(metrics={"tensorboard": False, "mlflow": True, "wandb": "auto"}))
    assert (config.metrics.tensorboard, config.metrics.mlflow, config.metrics.wandb) == (False, True, "auto")
    with pytest.raises(ConfigError, match="metrics.mlflow"):
        load_raw(tmp_path, raw(metrics={"mlflow": "sometimes"}))
    with pytest.raises(ConfigError, match="metrics.tensorbord"):
        load_raw(tmp_path, raw(metrics={"tensorbord": True}))


def test_sweep_section_is_validated(tmp_path):
    config = load_raw(tmp_path, raw(sweep={"alpha": [0.5, 1], "teacher_subsets": [["tiny_a"], []],
                                           "data_fractions": [0.5, 1.0]}))
    assert config.sweep.alpha == [0.5, 1.0] and config.sweep.baselines
    with pytest.raises(ConfigError, match="sweep.teacher_subsets names unknown teachers"):
        load_raw(tmp_path, raw(sweep={"teacher_subsets": [["ghost"]]}))
    with pytest.raises(ConfigError, match="sweep.alpha"):
        load_raw(tmp_path, raw(sweep={"alpha": [-1]}))
    with pytest.raises(ConfigError, match="sweep.data_fractions"):
        load_raw(tmp_path, raw(sweep={"data_fractions": [1.5]}))
