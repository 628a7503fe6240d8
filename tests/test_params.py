"""The params schema: its defaults are params.yaml, every key has a meaning, docs/params.md is
rendered from it, and every bad value is refused with its key path."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from seam.cli import app
from seam.core.params import Params, ParamsError, Section, load_params
from seam.core.paramsdoc import params_reference

YAML = yaml.safe_load((REPO / "params.yaml").read_text())


def test_defaults_are_params_yaml():
    # Every key of params.yaml is in the schema, with params.yaml's value as its default.
    assert Params().model_dump() == YAML
    assert load_params(REPO / "params.yaml") == Params()


def walk(schema: type[Section] = Params, path: str = ""):
    """(key path, field) of every key, sections included, depth first in declaration order."""
    for name, field in schema.model_fields.items():
        yield f"{path}{name}", field
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from walk(field.annotation, f"{path}{name}.")


def is_section(field) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, Section)


def test_every_key_has_a_description():
    # a key's meaning is its attribute docstring; a section's is its class's docstring
    missing = [path for path, field in walk() if not is_section(field) and not (field.description or "").strip()]
    missing += [f"{path} ({field.annotation.__name__} docstring)" for path, field in walk()
                if is_section(field) and not (field.annotation.__dict__.get("__doc__") or "").strip()]
    assert not missing, f"keys without a description in seam/core/params.py: {missing}"


def test_docs_params_md_is_rendered_from_the_schema():
    committed = (REPO / "docs" / "params.md").read_text()
    assert committed == params_reference(), (
        "docs/params.md differs from the schema in seam/core/params.py; "
        "regenerate it with `uv run seam params > docs/params.md`")


def test_seam_params_prints_the_reference():
    run = CliRunner().invoke(app, ["params"])
    assert run.exit_code == 0 and run.output == params_reference()


def reference_rows() -> list[tuple[str, list[str]]]:
    """The reference's table rows: (key path, [type, default, meaning]), cells unescaped."""
    rows = []
    for line in params_reference().splitlines():
        if line.startswith("| `"):
            key, *cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append((key.strip("`"), cells))
    return rows


def test_reference_has_every_key_with_its_default_and_meaning():
    rows = dict(reference_rows())
    keys = [path for path, field in walk() if not is_section(field)]
    assert sorted(path for path, _ in reference_rows()) == sorted(keys)  # each key once, nothing else
    for path, field in walk():
        if is_section(field):
            continue
        _type, default, meaning = rows[path]
        value = YAML
        for part in path.split("."):
            value = value[part]
        assert yaml.safe_load(default.strip("`")) == value, path  # params.yaml's own value
        assert meaning == " ".join(field.description.split()), path


@pytest.mark.parametrize("path, text", [
    ("seed", "int >= 0"),
    ("select_on", "`val` or `test`"),
    ("device", "string matching `^(auto|cpu|cuda(:[0-9]+)?)$`"),
    ("targets", "non-empty mapping"),
    ("prepare.val_fraction", "number >= 0 and < 1"),
    ("reengineer.lr_mask", "number > 0"),
    ("reengineer.precision", "`fp32`, `bf16` or `auto`"),
    ("model.input_size", "null or int > 0"),
    ("model.classes", "null or list of string, at least 2 items"),
    ("dataset.source", "null or non-empty string"),
    ("benchmark.batch1", "bool"),
    ("defects.attack.clip", "list of number, exactly 2 items"),
])
def test_reference_types_say_the_bounds(path, text):
    assert dict(reference_rows())[path][0] == text


def with_value(path: str, value):
    params = copy.deepcopy(YAML)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


@pytest.mark.parametrize("path, value, message", [
    ("reengineer.lr_mask", "fast", "reengineer.lr_mask: Input should be a valid number"),
    ("reengineer.lr_mask", 0, "reengineer.lr_mask: Input should be greater than 0"),
    ("reengineer.batch_size", 6.5, "reengineer.batch_size: Input should be a valid integer"),
    ("reengineer.max_epochs", True, "reengineer.max_epochs: Input should be a valid integer"),
    ("reengineer.early_stop", -1, "reengineer.early_stop: Input should be greater than or equal to 0"),
    ("reengineer.round_to", 0, "reengineer.round_to: Input should be greater than 0"),
    ("reengineer.cost", "flops", "reengineer.cost: Input should be 'weights' or 'macs'"),
    ("select_on", "train", "select_on: Input should be 'val' or 'test'"),
    ("device", "gpu", "device: String should match pattern"),
    ("alpha", -1, "alpha: Input should be greater than or equal to 0"),
    ("seed", "0", "seed: Input should be a valid integer"),
    ("prepare.val_fraction", 1.0, "prepare.val_fraction: Input should be less than 1"),
    ("dataset.name", "mnist", "dataset.name: Input should be 'cifar10', 'cifar100' or 'imagefolder'"),
    ("dataset.sha256", "ABC", "dataset.sha256: String should match pattern '^[0-9a-f]{64}$', got 'ABC'"),
    ("dataset.source", 3, "dataset.source: Input should be a valid string, got 3"),
    ("dataset.source", "", "dataset.source: String should have at least 1 character"),
    ("dataset", {"name": "imagefolder", "source": None, "sha256": None}, "dataset.source: required for imagefolder"),
    ("dataset", "cifar10", "dataset: Input should be a valid dictionary or instance of DatasetParams"),
    ("dataset.sorce", "x", "dataset.sorce: unknown key"),
    ("defects.seam.reengineer.threshold", 1.0, "defects.seam.reengineer.threshold: Input should be less than 1"),
    ("defects.finetune.lr_output", 0, "defects.finetune.lr_output: Input should be greater than 0"),
    ("defects.dropout", 1.0, "defects.dropout: Input should be less than 1"),
    ("defects.attack.clip", [1.0], "defects.attack.clip: List should have at least 2 items"),
    ("defects.remos.ratio", 0, "defects.remos.ratio: Input should be greater than 0"),
    ("defects.remos.ratio", 1.0, "defects.remos.ratio: Input should be less than 1"),
    ("defects.remos.keep_mask", "yes", "defects.remos.keep_mask: Input should be a valid boolean"),
    ("retrain.targets", [], "retrain.targets: List should have at least 1 item"),
    ("targets", {}, "targets: Dictionary should have at least 1 item after validation, not 0, got {}"),
    ("alpha", float("nan"), "alpha: Input should be a finite number, got nan"),
    ("reengineer.lr_mask", float("inf"), "reengineer.lr_mask: Input should be a finite number, got inf"),
    ("defects.attack.clip", [-2.2, float("-inf")], "defects.attack.clip.1: Input should be a finite number"),
    ("defects.train_per_class", 0, "defects.train_per_class: Input should be greater than 0"),
    ("benchmark.num_cores", 0, "benchmark.num_cores: Input should be greater than 0"),
    ("reengineer.lr_maks", 0.1, "reengineer.lr_maks: unknown key"),
    ("defects.seam.threshold", 0.6, "defects.seam.threshold: unknown key"),
])
def test_bad_value_names_the_key_path(tmp_path, path, value, message):
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(with_value(path, value)))
    with pytest.raises(ParamsError) as info:
        load_params(file)
    assert str(info.value).startswith(f"{file}: ") and message in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "bad.yaml").write_text("a: [")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1")
    with pytest.raises(ParamsError, match="mapping at the top level"):
        load_params(tmp_path / "list.yaml")


def test_ints_pass_for_floats(tmp_path):
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(with_value("alpha", 2)))
    params = load_params(file)
    assert params.alpha == 2.0 and isinstance(params.alpha, float)


def test_missing_keys_are_named_with_their_defaults(tmp_path):
    raw = copy.deepcopy(YAML)
    del raw["reengineer"]["lr_mask"], raw["defects"]["seam"]["reengineer"]["threshold"], raw["seed"]
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_params(file)
    assert str(info.value) == (f"{file}: missing key(s) seed (default: 0), reengineer.lr_mask (default: 0.05), "
                               "defects.seam.reengineer.threshold (default: 0.6)")


def test_keys_whose_default_is_null_may_be_left_out(tmp_path):
    raw = copy.deepcopy(YAML)
    raw["model"] = {"name": "resnet32"}
    del raw["benchmark"]["num_cores"]
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw))
    params = load_params(file)
    assert params.model.name == "resnet32" and params.model.checkpoint is None and params.benchmark.num_cores is None


def test_retrain_targets_must_be_targets(tmp_path):
    file = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["retrain"]["targets"] = ["vehicles", "nosuch"]
    file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: retrain.targets: \['nosuch'\] not in targets \(known: "
                                          r"\['airplane', 'airplane_channel', 'vehicles'\]\)"):
        load_params(file)


def test_a_target_may_carry_its_own_search_settings(tmp_path):
    file = tmp_path / "params.yaml"
    raw = with_value("targets.cat", {"binary": 3, "reengineer": {"granularity": "channel", "alpha": 2, "lr_mask": 0.005}})
    file.write_text(yaml.safe_dump(raw))
    params = load_params(file)
    alpha, own = params.search_settings("cat")
    assert alpha == 2 and own.granularity == "channel" and own.lr_mask == 0.005
    assert own.max_epochs == params.reengineer.max_epochs  # every other key from the section
    assert params.search_settings("airplane") == (params.alpha, params.reengineer)
    assert "cat" not in params.headline_targets() and "airplane" in params.headline_targets()


@pytest.mark.parametrize("override, message", [
    ({"granularity": "filter"}, "targets.cat.reengineer: granularity: Input should be 'weight' or 'channel'"),
    ({"lr_mask": -1}, "targets.cat.reengineer: lr_mask: Input should be greater than 0"),
    ({"alpha": True}, "targets.cat.reengineer: alpha: Input should be a valid number"),
    ({"lr_maks": 0.1}, "targets.cat.reengineer: lr_maks: unknown key"),
    ({}, "targets.cat.reengineer: expected a mapping of reengineer keys (and alpha), got {}"),
])
def test_a_bad_per_target_setting_names_its_key(tmp_path, override, message):
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(with_value("targets.cat", {"binary": 3, "reengineer": override})))
    with pytest.raises(ParamsError) as info:
        load_params(file)
    assert message in str(info.value)
