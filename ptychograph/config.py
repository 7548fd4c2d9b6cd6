"""Typed, validated configuration: one frozen pydantic model per YAML section.

Unknown keys are rejected, ranges are checked, and rules that span fields live in validators,
so a bad file fails when it is loaded. :func:`load_config` turns every problem into an
:class:`~ptychograph.errors.InputError` naming the key.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ptychograph.config_cluster import ClusterConfig
from ptychograph.config_cluster import Section as _Section
from ptychograph.config_live import FollowConfig
from ptychograph.config_reconstruction import ReconstructionConfig
from ptychograph.errors import InputError
from ptychograph.paths import absolute
from ptychograph.yamlfile import check_size, read_mapping


class GeometryConfig(_Section):
    """Detector geometry for inputs that do not carry it (NumPy files), or to override a file's."""

    energy_ev: float | None = Field(None, gt=0, description="Photon energy, eV.")
    distance_m: float | None = Field(None, gt=0, description="Sample-detector distance, m.")
    detector_pixel_m: float | None = Field(None, gt=0, description="Detector pixel size, m.")


class DataConfig(_Section):
    """Where the scan is and how to read it."""

    path: Path = Field(
        description="The scan: CXI (HDF5), NSLS-II HXN HDF5, NumPy .npz, or a frames .zarr store."
    )
    format: Literal["auto", "cxi", "hxn", "npz", "zarr"] = Field(
        "auto", description="Input format; auto detects it from the file."
    )
    positions_unit: Literal["m", "px"] = Field(
        "m", description="Unit of NumPy positions: metres, or object pixels."
    )
    geometry: GeometryConfig = Field(
        GeometryConfig(), description="Geometry for NumPy inputs, or overrides of the file's."
    )
    swap_xy: bool = Field(False, description="Swap the x and y sample translations.")
    flip_x: bool = Field(False, description="Mirror translation x (object column axis).")
    flip_y: bool = Field(False, description="Mirror translation y (object row axis).")
    nonfinite: Literal["error", "drop"] = Field(
        "error", description="Frames holding NaN/Inf: refuse the run, or drop those frames."
    )
    negative: Literal["error", "clip"] = Field(
        "error", description="Negative counts: refuse the run, or clip them to zero."
    )
    follow: bool = Field(False, description="Follow a frames store still being written (live).")


class InitialConfig(_Section):
    """Initial probe and object (docs/design.md, "Step 7")."""

    probe: Literal["auto", "data", "file", "previous"] = Field(
        "auto",
        description="auto: the file's illumination if present, else from the data; data: "
        "from the mean diffraction pattern; file: from `probe_path`; previous: from `previous`.",
    )
    probe_path: Path | None = Field(None, description="probe .npy (M,H,W)/(H,W) or result.zarr")
    object: Literal["flat", "random", "previous"] = Field("flat", description="Object start.")
    previous: Path | None = Field(None, description="Result .zarr of an earlier run.")
    extra_mode_power: float = Field(
        0.05, gt=0.0, lt=1.0, description="Power of each extra probe mode relative to the first."
    )

    @model_validator(mode="after")
    def _paths_given(self) -> InitialConfig:
        if self.probe == "file" and self.probe_path is None:
            raise ValueError("probe: 'file' needs initial.probe_path")
        needs_previous = self.probe == "previous" or self.object == "previous"
        if needs_previous and self.previous is None:
            raise ValueError("'previous' needs initial.previous (a result .zarr)")
        return self


class OutputConfig(_Section):
    """Where results go."""

    path: Path = Field(Path("result.zarr"), description="Result Zarr store.")
    figure: bool = Field(True, description="Also write a PNG summary beside the store.")
    preview_every: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Iterations between preview PNGs (<output stem>.preview.png; 0 = none).",
    )
    checkpoint_every: int = Field(
        25, ge=0, le=1_000_000, description="Iterations between checkpoints (0 = none)."
    )
    checkpoint: Path | None = Field(
        None, description="Checkpoint store (default: <output stem>.checkpoint.zarr beside it)."
    )
    keep_checkpoint: bool = Field(
        False,
        description="Keep the checkpoint after a successful run (to extend it later with "
        "--resume); by default it is removed once the result is written.",
    )

    @property
    def checkpoint_path(self) -> Path:
        """Where checkpoints go."""
        if self.checkpoint is not None:
            return self.checkpoint
        return self.path.with_name(self.path.stem + ".checkpoint.zarr")

    @field_validator("path")
    @classmethod
    def _store_suffix(cls, path: Path) -> Path:
        if path.suffix.lower() != ".zarr":
            raise ValueError(f"the result store must end in .zarr, got {path.name!r}")
        return path


class Config(_Section):
    """A whole run: the YAML file's top level."""

    data: DataConfig
    reconstruction: ReconstructionConfig = ReconstructionConfig()
    initial: InitialConfig = InitialConfig()
    output: OutputConfig = OutputConfig()
    cluster: ClusterConfig = ClusterConfig()
    follow: FollowConfig = FollowConfig()


def _error_line(err: ValidationError) -> InputError:
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    # union members add their type to the location (probe_modes.int, ...literal['auto'])
    parts = [str(p) for p in first["loc"] if not _is_type_tag(str(p))]
    field = ".".join(parts) or "config"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    elif first["type"] == "missing":
        message = "required key is missing"
    elif first["type"] == "value_error":
        message = str(first["msg"]).removeprefix("Value error, ")
    else:
        message = f"{message} (got {short_repr(first.get('input'))})"
    return InputError(field, message)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, safe for deep or huge values."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def _is_type_tag(part: str) -> bool:
    return part in {"int", "float", "str", "bool", "none"} or part.startswith(
        ("literal[", "function-", "lax-or-strict")
    )


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`; raise InputError naming the key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise _error_line(err) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise InputError("--set", f"expected section.key=value, got {short_repr(item)}")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(key, f"{part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            raise InputError(key, f"value {short_repr(value)} is not valid YAML") from None
        check_size(node[parts[-1]], f"--set {key[:60]}")
    return raw


def load_config(path: Path | str, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (safe loader, :mod:`ptychograph.yamlfile`), apply overrides, validate.

    Paths come back absolute: relative paths written in the file are taken relative to the
    file's folder; relative paths given with ``--set``, and defaults (``output.path:
    result.zarr``), relative to the current directory (docs/reliability.md, "Path semantics").
    """
    path = Path(path)
    raw = read_mapping(path)
    raw = apply_overrides(raw, overrides or [])
    config = parse_config(raw)
    given = {item.partition("=")[0] for item in overrides or []}
    given |= {key for key in PATH_FIELDS if not _written(raw, key)}  # defaults
    return resolve_paths(config, absolute(path.parent), Path.cwd(), given)


def _written(raw: dict[str, Any], key: str) -> bool:
    """Whether the dotted ``key`` has a value in the raw mapping (not left at its default)."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return False
        node = node[part]
    return True


#: Path fields of a config, as dotted keys.
PATH_FIELDS = (
    "data.path",
    "output.path",
    "output.checkpoint",
    "initial.probe_path",
    "initial.previous",
    "cluster.security.ca_file",
    "cluster.security.cert_file",
    "cluster.security.key_file",
)


def resolve_paths(
    config: Config,
    base: Path,
    cli_base: Path | None = None,
    given: Iterable[str] = (),
) -> Config:
    """Make every path of ``config`` absolute: against ``cli_base`` for the keys in ``given``
    (set on the command line, or a section of them), against ``base`` for the rest."""
    dumped = config.model_dump()
    for key in PATH_FIELDS:
        *sections, name = key.split(".")
        node = dumped
        for part in sections:
            node = node.get(part) or {}
        if node.get(name) is None:
            continue
        from_cli = any(key == g or key.startswith(g + ".") for g in given)
        node[name] = absolute(Path(node[name]), (cli_base or base) if from_cli else base, key)
    return Config.model_validate(dumped)
