"""The job config: defaults, TOML + overrides, round trip, field-naming errors, Bedrock aliases."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from openrft.config import (
    RANGES,
    JobConfig,
    config_from_dict,
    dump_config,
    field_comments,
    get_field,
    load_config,
)
from openrft.config_parse import BEDROCK_ALIASES
from openrft.errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parents[2] / "openrft" / "recipes"


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(JobConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


SECTIONS = _sections()
SECTION_FIELDS = [
    f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
]


def _field_type(dotted: str) -> type:
    section, key = dotted.split(".")
    return typing.get_type_hints(SECTIONS[section])[key]


def _raises(match_field: str, **kwargs) -> pytest.ExceptionInfo[ConfigError]:
    """Assert load_config(**kwargs) raises a ConfigError naming `match_field`."""
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    assert info.value.field == match_field
    assert f"'{match_field}'" in str(info.value)
    return info


def _write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- loading ---------------------------------------------------------------------------------


def test_defaults_load_and_equal_the_dataclass_defaults():
    config = load_config()
    assert config == JobConfig()
    assert config.model.name == "smollm2-135m-instruct"
    assert config.lora.target_modules == ("all-linear",)
    assert config.reward.error_score is None
    for name, (low, high) in RANGES.items():
        assert low <= get_field(config, name) <= high, name


def test_toml_file_then_overrides(tmp_path):
    path = _write(
        tmp_path,
        'name = "mine"\n'
        "[train]\nlearning_rate = 3e-4\nepochs = 2\n"
        '[rollout]\nstop = ["\\n\\n"]\ntemperature = 0.7\n'
        '[lora]\ntarget_modules = ["q_proj", "v_proj"]\n',
    )
    config = load_config(path, ["train.epochs=5", "rollout.top_k=20"])
    assert config.name == "mine"
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.train.epochs == 5  # the override wins over the file
    assert config.rollout.top_k == 20
    assert config.rollout.stop == ("\n\n",)
    assert config.rollout.temperature == pytest.approx(0.7)
    assert config.lora.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize(
    ("override", "dotted", "expected"),
    [
        ("train.epochs=3", "train.epochs", 3),
        ("train.learning_rate=2e-5", "train.learning_rate", 2e-5),
        ("train.learning_rate=1", "train.learning_rate", 1.0),  # ints are accepted for floats
        ("rollout.temperature=0.5", "rollout.temperature", 0.5),
        ("lora.enabled=false", "lora.enabled", False),
        ("train.lr_schedule=cosine", "train.lr_schedule", "cosine"),  # bare word
        ("algo.kl_estimator=k1", "algo.kl_estimator", "k1"),
        ('model.name="my-model"', "model.name", "my-model"),  # quoted TOML string
        ("data.train_file=path/to/rows.jsonl", "data.train_file", "path/to/rows.jsonl"),
        ("data.train_file=a=b.jsonl", "data.train_file", "a=b.jsonl"),  # split on the first =
        ('rollout.stop=["###", "END"]', "rollout.stop", ("###", "END")),  # list
        ("rollout.stop=###", "rollout.stop", ("###",)),  # one bare string becomes a 1-tuple
        ('lora.target_modules=["q_proj"]', "lora.target_modules", ("q_proj",)),
        ("reward.error_score=0", "reward.error_score", 0.0),
        ("reward.error_score=-1.5", "reward.error_score", -1.5),
        ("name=job-7", "name", "job-7"),
        (" train.seed = 7", "train.seed", 7),  # whitespace around the key and value
    ],
)
def test_override_values(override, dotted, expected):
    config = load_config(overrides=[override])
    value = get_field(config, dotted)
    assert value == expected
    assert type(value) is type(expected)


def test_later_override_wins():
    config = load_config(overrides=["train.seed=1", "train.seed=2"])
    assert config.train.seed == 2


def test_dump_then_load_round_trips(tmp_path):
    config = load_config(
        overrides=[
            "name=round-trip",
            "model.dtype=bfloat16",
            "lora.target_modules=['q_proj', 'k_proj']",
            "lora.dropout=0.05",
            "rollout.stop=['\\n', 'END']",
            "reward.error_score=-1",
            "reward.timeout_s=2.5",
            "train.learning_rate=1.5e-6",
            "train.lr_schedule=cosine",
            "algo.loss_aggregation=constant",
            "eval.temperature=0.3",
        ]
    )
    path = tmp_path / "config.toml"
    dump_config(config, path)
    assert load_config(path) == config


def test_dump_leaves_out_unset_optional_fields(tmp_path):
    path = tmp_path / "config.toml"
    dump_config(JobConfig(), path)
    assert "error_score" not in path.read_text()
    assert load_config(path) == JobConfig()


@pytest.mark.parametrize("recipe", sorted(RECIPE_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    config = load_config(recipe)
    assert isinstance(config, JobConfig)


def test_there_is_at_least_one_shipped_recipe():
    assert list(RECIPE_DIR.glob("*.toml"))


# --- errors name the field -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ("optim.lr=1", "optim", "unknown field"),  # unknown section
        ("trian.epochs=1", "trian", "did you mean 'train'"),
        ("train.learnig_rate=1e-5", "train.learnig_rate", "did you mean 'learning_rate'"),
        ("rollout.temprature=0.5", "rollout.temprature", "did you mean 'temperature'"),
        ("nme=x", "nme", "did you mean 'name'"),
    ],
)
def test_unknown_names_are_rejected_with_a_suggestion(override, field, fragment):
    info = _raises(field, overrides=[override])
    assert fragment in str(info.value)


def test_unknown_field_without_a_close_match_lists_the_known_ones():
    info = _raises("lora.zzzzzz", overrides=["lora.zzzzzz=1"])
    assert "known:" in str(info.value)
    assert "rank" in str(info.value)


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ("train.epochs=true", "train.epochs", "must be an integer"),  # bool for int
        ("train.epochs=2.5", "train.epochs", "must be an integer"),  # float for int
        ('train.epochs="3"', "train.epochs", "must be an integer"),  # string for int
        ("train.learning_rate=fast", "train.learning_rate", "must be a number"),  # str for float
        ('train.learning_rate="1e-5"', "train.learning_rate", "must be a number"),
        ("train.learning_rate=true", "train.learning_rate", "must be a number"),  # bool for float
        ("lora.enabled=1", "lora.enabled", "must be true or false"),  # int for bool
        ('lora.enabled="yes"', "lora.enabled", "must be true or false"),
        ("model.name=123", "model.name", "must be a string"),
        ("rollout.stop=3", "rollout.stop", "must be a list"),
        ("rollout.stop=[1]", "rollout.stop[0]", "must be a string"),
        ("reward.error_score=yes", "reward.error_score", "must be a number"),
    ],
)
def test_wrong_types_name_the_field(override, field, fragment):
    info = _raises(field, overrides=[override])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("override", "field", "choices"),
    [
        ("train.lr_schedule=linear", "train.lr_schedule", ["constant", "cosine"]),
        ("model.dtype=float16", "model.dtype", ["float32", "bfloat16"]),
        ("model.chat_template=chatml", "model.chat_template", ["model", "plain"]),
        ("rollout.engine=sglang", "rollout.engine", ["hf", "vllm"]),
        ("vllm.dtype=int8", "vllm.dtype", ["model", "bfloat16", "float16", "float32"]),
        (
            "algo.advantage=rank",
            "algo.advantage",
            ["grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_per_turn"],
        ),
        (
            "algo.policy_loss=dpo",
            "algo.policy_loss",
            ["ppo", "gspo", "cispo", "importance_sampling"],
        ),
        ("train.fast_paths=on", "train.fast_paths", ["auto", "off"]),
        ("checkpoint.final=first", "checkpoint.final", ["last", "best"]),
        (
            "algo.loss_aggregation=sum",
            "algo.loss_aggregation",
            ["token_mean", "sequence_mean", "constant"],
        ),
        ("algo.kl_estimator=k2", "algo.kl_estimator", ["k1", "k3"]),
    ],
)
def test_literal_fields_list_their_choices(override, field, choices):
    info = _raises(field, overrides=[override])
    assert "is not one of" in str(info.value)
    for choice in choices:
        assert choice in str(info.value)


# algo.overlong_buffer must not exceed rollout.max_new_tokens.
RANGE_COMPANIONS = {"algo.overlong_buffer": {"rollout": {"max_new_tokens": 1_000_000}}}


def _beyond(dotted: str, bound: float, direction: int) -> int | float:
    """The value just past `bound` (direction -1 below, +1 above), in the field's own type."""
    if _field_type(dotted) is int:
        return int(bound) + direction
    return math.nextafter(float(bound), direction * math.inf)


@pytest.mark.parametrize(("dotted", "bounds"), sorted(RANGES.items()), ids=sorted(RANGES))
def test_every_range_bound_is_enforced(dotted, bounds):
    low, high = bounds
    section, key = dotted.split(".")
    # A field whose range a cross-field rule narrows gets room from the field it is tied to.
    companion = RANGE_COMPANIONS.get(dotted, {})
    # Both bounds themselves are allowed.
    for value in (low, high):
        value = int(value) if _field_type(dotted) is int else float(value)
        raw = {**companion, section: {**companion.get(section, {}), key: value}}
        assert get_field(config_from_dict(raw), dotted) == value
    for bound, direction in ((low, -1), (high, +1)):
        value = _beyond(dotted, bound, direction)
        if value == bound:  # not representable
            continue
        with pytest.raises(ConfigError) as info:
            config_from_dict({**companion, section: {**companion.get(section, {}), key: value}})
        assert info.value.field == dotted
        assert dotted in str(info.value)
        assert f"allowed {low} to {high}" in str(info.value)


def test_range_error_through_an_override_names_the_field():
    info = _raises("lora.rank", overrides=["lora.rank=0"])
    assert "allowed 1 to 1024" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"data": {"train_file": ""}}, "data.train_file"),
        ({"reward": {"error_score": math.inf}}, "reward.error_score"),
        ({"reward": {"error_score": math.nan}}, "reward.error_score"),
        ({"lora": {"target_modules": []}}, "lora.target_modules"),
        ({"lora": {"dropout": math.nan}}, "lora.dropout"),
    ],
)
def test_cross_field_and_non_finite_rules(raw, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert info.value.field == field


def test_override_without_equals_sign():
    info = _raises("train.epochs", overrides=["train.epochs"])
    assert "section.key=value" in str(info.value)


def test_override_into_a_value_is_rejected():
    _raises("lora.rank.x", overrides=["lora.rank=4", "lora.rank.x=1"])


def test_a_section_given_a_value_is_rejected():
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(overrides=["lora=3"])


def test_missing_file(tmp_path):
    info = _raises("<file>", path=tmp_path / "absent.toml")
    assert "not found" in str(info.value)
    assert "absent.toml" in str(info.value)


def test_bad_toml_file(tmp_path):
    path = _write(tmp_path, "[train\nepochs = 1\n")
    info = _raises("<file>", path=path)
    assert "not valid TOML" in str(info.value)


def test_error_in_a_file_names_the_field(tmp_path):
    path = _write(tmp_path, "[train]\nepochs = 0\n")
    _raises("train.epochs", path=path)


# --- Bedrock hyperparameters -----------------------------------------------------------------

BEDROCK_VALUES = [
    ("epochCount", 3, "train.epochs"),
    ("batchSize", 32, "train.prompts_per_step"),
    ("learningRate", 5e-5, "train.learning_rate"),
    ("trainingSamplePerPrompt", 4, "rollout.samples_per_prompt"),
    ("inferenceMaxTokens", 256, "rollout.max_new_tokens"),
    ("maxPromptLength", 2048, "data.max_prompt_tokens"),
    ("evalInterval", 5, "eval.interval"),
]


def test_every_bedrock_alias_is_covered():
    assert {name for name, _, _ in BEDROCK_VALUES} == set(BEDROCK_ALIASES)
    assert {name: target for name, _, target in BEDROCK_VALUES} == {
        name: target for name, (target, _) in BEDROCK_ALIASES.items()
    }


@pytest.mark.parametrize(("alias", "value", "target"), BEDROCK_VALUES)
def test_bedrock_alias_maps_onto_the_native_field(tmp_path, alias, value, target):
    path = _write(tmp_path, f"[hyperParameters]\n{alias} = {value!r}\n")
    assert get_field(load_config(path), target) == value


def test_bedrock_table_with_every_alias_at_once(tmp_path):
    body = "".join(f"{alias} = {value!r}\n" for alias, value, _ in BEDROCK_VALUES)
    config = load_config(_write(tmp_path, "[hyperParameters]\n" + body))
    for _, value, target in BEDROCK_VALUES:
        assert get_field(config, target) == value
    dumped = tmp_path / "dumped.toml"
    dump_config(config, dumped)
    assert "hyperParameters" not in dumped.read_text()  # written back as native fields
    assert load_config(dumped) == config


@pytest.mark.parametrize(
    ("alias", "value", "allowed"),
    [
        ("epochCount", 0, "1 to 50"),
        ("epochCount", 51, "1 to 50"),
        ("batchSize", 15, "16 to 512"),
        ("batchSize", 513, "16 to 512"),
        ("learningRate", 1e-8, "1e-07 to 0.001"),
        ("learningRate", 2e-3, "1e-07 to 0.001"),
        ("trainingSamplePerPrompt", 1, "2 to 16"),
        ("trainingSamplePerPrompt", 17, "2 to 16"),
        ("evalInterval", 0, "1 to 100"),
        ("evalInterval", 101, "1 to 100"),
    ],
)
def test_bedrock_ranges_are_enforced(tmp_path, alias, value, allowed):
    path = _write(tmp_path, f"[hyperParameters]\n{alias} = {value!r}\n")
    info = _raises(f"hyperParameters.{alias}", path=path)
    assert "Bedrock's range" in str(info.value)
    assert allowed in str(info.value)


@pytest.mark.parametrize(("alias", "value"), [("epochCount", 1), ("epochCount", 50)])
def test_bedrock_range_bounds_are_inclusive(alias, value):
    config = config_from_dict({"hyperParameters": {alias: value}})
    assert config.train.epochs == value


def test_bedrock_range_is_narrower_than_the_native_one():
    # evalInterval 0 is a valid native eval.interval but outside Bedrock's range.
    assert config_from_dict({"eval": {"interval": 0}}).eval.interval == 0
    with pytest.raises(ConfigError):
        config_from_dict({"hyperParameters": {"evalInterval": 0}})


def test_unknown_bedrock_name_errors(tmp_path):
    path = _write(tmp_path, "[hyperParameters]\nepochCounts = 2\n")
    info = _raises("hyperParameters.epochCounts", path=path)
    assert "unknown Bedrock hyperparameter" in str(info.value)
    assert "did you mean 'epochCount'" in str(info.value)


@pytest.mark.parametrize("value", ['"3"', "true", "[3]"])
def test_bedrock_value_must_be_a_number(tmp_path, value):
    path = _write(tmp_path, f"[hyperParameters]\nepochCount = {value}\n")
    info = _raises("hyperParameters.epochCount", path=path)
    assert "must be a number" in str(info.value)


def test_bedrock_section_must_be_a_table():
    _raises("hyperParameters", overrides=["hyperParameters=3"])


def test_bedrock_alias_conflicting_with_the_native_field_errors(tmp_path):
    path = _write(tmp_path, "[train]\nepochs = 3\n[hyperParameters]\nepochCount = 5\n")
    info = _raises("hyperParameters.epochCount", path=path)
    assert "train.epochs" in str(info.value)
    assert "set only one" in str(info.value)


def test_bedrock_alias_conflicting_with_an_override_errors(tmp_path):
    path = _write(tmp_path, "[hyperParameters]\nlearningRate = 1e-4\n")
    _raises("hyperParameters.learningRate", path=path, overrides=["train.learning_rate=2e-4"])


def test_bedrock_alias_agreeing_with_the_native_field_is_fine(tmp_path):
    path = _write(tmp_path, "[train]\nepochs = 4\n[hyperParameters]\nepochCount = 4\n")
    assert load_config(path).train.epochs == 4


def test_bedrock_alias_via_override():
    config = load_config(overrides=["hyperParameters.batchSize=64"])
    assert config.train.prompts_per_step == 64


# --- field comments --------------------------------------------------------------------------

TOP_LEVEL_FIELDS = [f.name for f in dataclasses.fields(JobConfig) if f.name not in SECTIONS]


@pytest.mark.parametrize("dotted", SECTION_FIELDS + TOP_LEVEL_FIELDS)
def test_every_field_has_a_one_line_comment(dotted):
    comment = field_comments().get(dotted, "")
    assert comment.strip(), f"{dotted} has no comment in field_comments()"
    assert "\n" not in comment


def test_field_comments_has_no_entries_for_unknown_fields():
    assert set(field_comments()) <= set(SECTION_FIELDS + TOP_LEVEL_FIELDS)


def test_bedrock_alias_into_a_section_given_a_value_names_the_section():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": 5, "hyperParameters": {"epochCount": 3}})
    assert info.value.field == "train"


def test_a_section_given_a_value_is_named_without_a_trailing_dot():
    _raises("lora", overrides=["lora=3"])


def test_an_inline_grader_table_is_a_grader_spec(tmp_path):
    from openrft.rewards import build_grader
    from tests.rewards._samples import make_sample

    path = tmp_path / "job.toml"
    path.write_text(
        '[data]\ntrain_file = "train.jsonl"\n'
        '[reward.grader]\ntype = "string_check"\nname = "label"\noperation = "eq"\n'
        'input = "{{ sample.output_text }}"\nreference = "{{ item.reference_answer }}"\n'
    )
    config = load_config(path)
    assert config.reward.grader["type"] == "string_check"
    dump_config(config, tmp_path / "resolved.toml")  # the saved config keeps the table
    assert load_config(tmp_path / "resolved.toml") == config
    grader = build_grader(config.reward.grader)
    grades = grader.grade([make_sample("yes", reference="yes"), make_sample("no", reference="yes")])
    assert [g.score for g in grades] == [1.0, 0.0]


def test_an_inline_grader_table_needs_a_type():
    with pytest.raises(ConfigError, match=r"reward\.grader\.type"):
        config_from_dict({"data": {"train_file": "x"}, "reward": {"grader": {"name": "x"}}})
    with pytest.raises(ConfigError, match=r"reward\.grader"):
        config_from_dict({"data": {"train_file": "x"}, "reward": {"grader": 3}})


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu"])
def test_a_bad_device_names_the_field(value):
    info = _raises("model.device", overrides=["data.train_file=x.jsonl", f"model.device={value}"])
    assert "auto, cpu, cuda or cuda:N" in str(info.value)


def test_a_vllm_url_must_be_http():
    _raises("vllm.url", overrides=["data.train_file=x.jsonl", "vllm.url=localhost:8000"])


@pytest.mark.parametrize(("old", "new"), [("group", "grpo"), ("none", "drgrpo")])
def test_the_old_advantage_scaling_names_the_estimator_it_was(old, new):
    assert load_config(None, [f'algo.advantage_scaling="{old}"']).algo.advantage == new
    both = [f'algo.advantage_scaling="{old}"', f'algo.advantage="{new}"']
    assert load_config(None, both).algo.advantage == new


def test_the_old_batch_scaling_and_conflicts_are_refused_with_the_replacement():
    info = _raises("algo.advantage_scaling", overrides=['algo.advantage_scaling="batch"'])
    assert "reinforce_pp_baseline" in str(info.value)
    conflict = ['algo.advantage_scaling="group"', 'algo.advantage="rloo"']
    info = _raises("algo.advantage_scaling", overrides=conflict)
    assert "conflicts with algo.advantage = 'rloo'" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        (["algo.overlong_buffer=100", "rollout.max_new_tokens=64"], "algo.overlong_buffer", "64"),
        (["checkpoint.final=best"], "checkpoint.final", "keep_best >= 1"),
        (
            ["train.early_stop_patience=2", "eval.interval=0"],
            "train.early_stop_patience",
            "interval",
        ),
        (['checkpoint.best_metric=""'], "checkpoint.best_metric", "must name a metric"),
    ],
)
def test_cross_field_rules_of_the_new_knobs(overrides, field, fragment):
    info = _raises(field, overrides=overrides)
    assert fragment in str(info.value)


def test_the_reference_in_docs_is_what_openrft_config_prints(capsys):
    # docs/config.md shows every field with its default and comment; it must not drift.
    import re
    from pathlib import Path

    from openrft.cli import main

    assert main(["config"]) == 0
    printed = capsys.readouterr().out.strip()
    docs = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    assert re.search(r"```toml\n(.*?)```", docs, re.S).group(1).strip() == printed
