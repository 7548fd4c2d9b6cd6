"""The YAML config (ptychograph.config): unknown keys, ranges, types, overrides, paths.

Every problem must become one :class:`InputError` whose ``field`` names the key, so the CLI
can print ``error: FIELD: PROBLEM`` on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from ptychograph.config import Config, apply_overrides, load_config
from ptychograph.errors import InputError


def dump(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def config_with(tmp_path: Path, section: str, key: str, value: str) -> Path:
    """A config file reading scan.cxi whose ``section.key`` is the YAML text ``value``."""
    raw: dict[str, Any] = {"data": {"path": "scan.cxi"}}
    raw.setdefault(section, {})[key] = yaml.safe_load(value)
    return dump(tmp_path, yaml.safe_dump(raw))


def load_error(path: Path, overrides: list[str] | None = None) -> InputError:
    """The InputError load_config raises; checks it fits on one line."""
    with pytest.raises(InputError) as info:
        load_config(path, overrides)
    err = info.value
    assert "\n" not in str(err)
    assert str(err) == f"{err.field}: {err.problem}"
    return err


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(dump(tmp_path, "data:\n  path: scan.cxi\n"))
    assert config.reconstruction.iterations == 200
    assert config.reconstruction.beta == 0.8
    assert config.reconstruction.probe_modes == 1
    assert config.reconstruction.precision == "single"
    assert config.data.nonfinite == "error" and config.data.negative == "error"
    assert config.initial.probe == "auto"
    assert config.output.path == Path.cwd() / "result.zarr"  # a default: the current folder
    assert config.output.figure is True


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(dump(tmp_path, "data:\n  path: scan.cxi\n"))
    with pytest.raises(pydantic.ValidationError):
        config.reconstruction.iterations = 5  # type: ignore[misc]


# --- unknown keys -------------------------------------------------------------------------


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\nextras:\n  colour: red\n"))
    assert err.field == "extras"
    assert "unknown key" in err.problem


def test_misspelt_section_is_named(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\nreconstrution:\n  beta: 0.5\n"))
    assert err.field == "reconstrution"
    assert "unknown key" in err.problem


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("reconstruction", "iteratons"),
        ("data", "nonfinte"),
        ("initial", "probe_file"),
        ("output", "folder"),
    ],
)
def test_unknown_key_in_section_is_named(tmp_path: Path, section: str, key: str) -> None:
    err = load_error(config_with(tmp_path, section, key, "1"))
    assert err.field == f"{section}.{key}"
    assert "unknown key" in err.problem


def test_missing_data_section(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "reconstruction:\n  iterations: 2\n"))
    assert err.field == "data"
    assert "missing" in err.problem


def test_missing_data_path(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "data:\n  swap_xy: true\n"))
    assert err.field == "data.path"
    assert "missing" in err.problem


# --- ranges and choices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta", "1.5"),
        ("beta", "0"),
        ("beta", ".nan"),
        ("iterations", "0"),
        ("iterations", "-3"),
        ("probe_modes", "0"),
        ("probe_modes", "33"),
        ("object_modes", "0"),
        ("precision", "quad"),
        ("seed", "-1"),
        ("regularisation", "1.0"),
        ("average_last", "1.0"),
        ("batch_size", "0"),
        ("overlap_passes", "0"),
    ],
)
def test_out_of_range_reconstruction_value(tmp_path: Path, key: str, value: str) -> None:
    err = load_error(config_with(tmp_path, "reconstruction", key, value))
    assert err.field == f"reconstruction.{key}"
    assert "got" in err.problem  # the message repeats the rejected value


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "nonfinite", "ignore"),
        ("data", "negative", "abs"),
        ("initial", "probe", "gaussian"),
        ("initial", "object", "noise"),
        ("initial", "extra_mode_power", "0"),
    ],
)
def test_invalid_choice(tmp_path: Path, section: str, key: str, value: str) -> None:
    err = load_error(config_with(tmp_path, section, key, value))
    assert err.field == f"{section}.{key}"
    assert value in err.problem


def test_precision_choice_names_the_options(tmp_path: Path) -> None:
    err = load_error(config_with(tmp_path, "reconstruction", "precision", "quad"))
    assert "'single'" in err.problem and "'double'" in err.problem and "'quad'" in err.problem


# --- types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("reconstruction", "iterations", "many"),
        ("reconstruction", "iterations", "2.5"),
        ("reconstruction", "beta", "high"),
        ("reconstruction", "beta", "[0.5]"),
        ("reconstruction", "probe_modes", "{n: 2}"),
        ("data", "swap_xy", "perhaps"),
        ("data", "path", "[a, b]"),
        ("output", "figure", "maybe"),
    ],
)
def test_wrong_type(tmp_path: Path, section: str, key: str, value: str) -> None:
    err = load_error(config_with(tmp_path, section, key, value))
    assert err.field == f"{section}.{key}"


@pytest.mark.parametrize(
    "text",
    ["data: scan.cxi\n", "data:\n  path: scan.cxi\nreconstruction: 5\n", "data: [1, 2]\n"],
    ids=["data-scalar", "section-scalar", "data-list"],
)
def test_section_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    err = load_error(dump(tmp_path, text))
    assert err.field in ("data", "reconstruction")
    assert "dictionary" in err.problem


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    err = load_error(config_with(tmp_path, "reconstruction", "iterations", "true"))
    assert err.field == "reconstruction.iterations"


# --- rules across fields ------------------------------------------------------------------


def test_probe_file_needs_probe_path(tmp_path: Path) -> None:
    err = load_error(config_with(tmp_path, "initial", "probe", "file"))
    assert err.field.startswith("initial")
    assert "probe_path" in err.problem


@pytest.mark.parametrize(("key", "value"), [("probe", "previous"), ("object", "previous")])
def test_previous_needs_a_store(tmp_path: Path, key: str, value: str) -> None:
    err = load_error(config_with(tmp_path, "initial", key, value))
    assert err.field.startswith("initial")
    assert "initial.previous" in err.problem


def test_probe_file_with_path_is_accepted(tmp_path: Path) -> None:
    path = dump(tmp_path, "data:\n  path: s.cxi\ninitial:\n  probe: file\n  probe_path: p.npy\n")
    assert load_config(path).initial.probe_path == tmp_path / "p.npy"


# --- --set overrides ----------------------------------------------------------------------


def test_overrides_are_applied(tmp_path: Path) -> None:
    path = dump(tmp_path, "data:\n  path: scan.cxi\nreconstruction:\n  iterations: 2\n")
    config = load_config(
        path,
        [
            "reconstruction.iterations=7",
            "reconstruction.beta=0.5",
            "reconstruction.precision=double",
            "data.swap_xy=true",
            "initial.object=random",  # a section the file does not have
            "output.figure=false",
        ],
    )
    assert config.reconstruction.iterations == 7
    assert config.reconstruction.beta == 0.5
    assert config.reconstruction.precision == "double"
    assert config.data.swap_xy is True
    assert config.initial.object == "random"
    assert config.output.figure is False


def test_later_override_wins(tmp_path: Path) -> None:
    path = dump(tmp_path, "data:\n  path: scan.cxi\n")
    overrides = ["reconstruction.iterations=3", "reconstruction.iterations=4"]
    assert load_config(path, overrides).reconstruction.iterations == 4


def test_override_can_supply_the_data_section(tmp_path: Path) -> None:
    config = load_config(dump(tmp_path, "reconstruction:\n  iterations: 2\n"), ["data.path=a.cxi"])
    assert config.data.path == Path.cwd() / "a.cxi"  # --set paths: against the current folder


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("reconstruction.beta=2", "reconstruction.beta"),
        ("reconstruction.iterations=0", "reconstruction.iterations"),
        ("reconstruction.precision=quad", "reconstruction.precision"),
        ("reconstruction.iteratons=5", "reconstruction.iteratons"),
        ("data.nonfinite=keep", "data.nonfinite"),
        ("colour=red", "colour"),
    ],
)
def test_overrides_are_validated(tmp_path: Path, override: str, field: str) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\n"), [override])
    assert err.field == field


@pytest.mark.parametrize("override", ["reconstruction.iterations", "=5", "noequals"])
def test_override_without_key_or_equals(tmp_path: Path, override: str) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\n"), [override])
    assert err.field == "--set"
    assert repr(override) in err.problem


def test_override_below_a_value_is_refused(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\n"), ["data.path.x=1"])
    assert err.field == "data.path.x"
    assert "not a section" in err.problem


def test_override_value_that_is_not_yaml(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, "data:\n  path: scan.cxi\n"), ["reconstruction.beta=["])
    assert "reconstruction.beta" in str(err)


def test_apply_overrides_parses_values_as_yaml() -> None:
    raw = apply_overrides({}, ["a.b=3", "a.c=0.5", "a.d=true", "a.e=text", "a.f=[1, 2]"])
    assert raw == {"a": {"b": 3, "c": 0.5, "d": True, "e": "text", "f": [1, 2]}}


# --- paths --------------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = (
        "data:\n  path: ../data/scan.cxi\n"
        "initial:\n  probe: file\n  probe_path: probe.npy\n  previous: old/result.zarr\n"
        "output:\n  path: out/result.zarr\n"
    )
    path = folder / "run.yaml"
    path.write_text(text)
    config = load_config(Path("..") / "configs" / "run.yaml")
    assert config.data.path == tmp_path / "data" / "scan.cxi"  # absolute, for the workers
    assert config.data.path.resolve() == tmp_path / "data" / "scan.cxi"
    assert config.initial.probe_path is not None and config.initial.previous is not None
    assert config.initial.probe_path.resolve() == folder / "probe.npy"
    assert config.initial.previous.resolve() == folder / "old" / "result.zarr"
    assert config.output.path.resolve() == folder / "out" / "result.zarr"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere" / "scan.cxi"
    out = tmp_path / "results" / "r.zarr"
    config = load_config(dump(tmp_path, f"data:\n  path: {data}\noutput:\n  path: {out}\n"))
    assert config.data.path == data
    assert config.output.path == out


def test_default_output_is_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path the file does not give is not the file's: it goes where the user is (issue 11,
    so that the example configs in the repository never write into it)."""
    here = tmp_path / "shell"
    here.mkdir()
    monkeypatch.chdir(here)
    config = load_config(dump(tmp_path, "data:\n  path: scan.cxi\n"))
    assert config.output.path == here / "result.zarr"
    assert config.output.checkpoint_path == here / "result.checkpoint.zarr"
    assert config.data.path == tmp_path / "scan.cxi"


# --- the file itself ----------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.yaml")
    assert err.field == "config"
    assert "nope.yaml" in err.problem and "does not exist" in err.problem


def test_config_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").mkdir()
    err = load_error(tmp_path / "run.yaml")
    assert err.field == "config"


@pytest.mark.parametrize(
    "text", ["- data\n- reconstruction\n", "just a string\n", "42\n"], ids=["list", "str", "int"]
)
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    err = load_error(dump(tmp_path, text))
    assert err.field == "config"
    assert "mapping" in err.problem


def test_empty_file_reports_the_missing_data_section(tmp_path: Path) -> None:
    err = load_error(dump(tmp_path, ""))
    assert err.field == "data"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("data:\n  path: scan.cxi\nreconstruction:\n  iterations: [2\n  beta: 0.5\n", 5),
        ("data:\n  path: scan.cxi\n   bad_indent: 1\n", 3),
        ("data:\n  path: scan.cxi\nreconstruction:\n\titerations: 2\n", 4),
    ],
    ids=["unclosed-bracket", "bad-indent", "tab"],
)
def test_invalid_yaml_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    err = load_error(dump(tmp_path, text))
    assert err.field == "config"
    assert "not valid YAML" in err.problem
    assert f"line {line}" in err.problem


def test_config_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xff\xfe\x00d\x00a\x00t\x00a")
    err = load_error(path)
    assert err.field == "config"


def test_model_accepts_what_load_config_writes(tmp_path: Path) -> None:
    """The resolved config round-trips through JSON (it is stored in the result's attrs)."""
    config = load_config(dump(tmp_path, "data:\n  path: scan.cxi\n"))
    assert Config.model_validate_json(config.model_dump_json()) == config
