"""Typed, validated configuration: one frozen pydantic model per YAML section.

Unknown keys are rejected, ranges are checked, and rules that span fields live in validators,
so a bad file fails when it is loaded. :func:`load_config` turns every problem into an
:class:`~ptychograph.errors.InputError` naming the key.
"""

from __future__ import annotations

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
from ptychograph.errors import InputError


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


class ReconstructionConfig(_Section):
    """The Difference Map iteration (docs/design.md, "One DM iteration")."""

    @field_validator("probe_modes")
    @classmethod
    def _mode_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 32:
            raise ValueError(f"must be between 1 and 32 or 'auto', got {value}")
        return value

    @property
    def start_probe_modes(self) -> int:
        """Probe modes at the start: the number asked for, or max_probe_modes for auto (also
        the most the run holds, which memory planning uses)."""
        return self.max_probe_modes if self.probe_modes == "auto" else int(self.probe_modes)

    iterations: int = Field(200, ge=1, le=1_000_000, description="DM iterations.")
    beta: float = Field(0.8, gt=0.0, le=1.0, description="DM feedback (1 = classic DM).")
    probe_modes: int | Literal["auto"] = Field(
        1,
        description="Number of incoherent probe modes (1-32), or auto: start with "
        "max_probe_modes and keep those carrying at least mode_threshold of the power.",
    )
    mode_threshold: float = Field(
        0.01, gt=0.0, lt=0.5, description="auto modes: least power share a kept mode carries."
    )
    max_probe_modes: int = Field(5, ge=2, le=32, description="auto modes: at most this many.")
    mode_decision: float = Field(
        0.4, gt=0.0, lt=1.0, description="auto modes: fraction of the run after which to decide."
    )
    object_modes: int = Field(1, ge=1, le=8, description="Number of object modes.")
    precision: Literal["single", "double"] = Field(
        "single", description="single = complex64, double = complex128."
    )
    seed: int = Field(0, ge=0, description="Seed of every random choice; fixes the run.")
    overlap_passes: int = Field(
        2, ge=1, le=50, description="Alternating probe/object passes per iteration."
    )
    probe_update_start: int = Field(
        2, ge=0, description="Iteration from which the probe is updated (0 = from the start)."
    )
    regularisation: float = Field(
        1e-2, gt=0.0, lt=1.0, description="Overlap division damping, fraction of max(denom)."
    )
    orthogonalise_probe: bool = Field(
        True, description="Orthogonalise probe modes every iteration (psi rotated alike)."
    )
    noise_bound: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Relax the Fourier constraint for views already within this many times the "
        "Poisson noise (0 = plain eq. 4).",
    )
    average_last: float = Field(
        0.2, ge=0.0, lt=1.0, description="Fraction of final iterations averaged into the result."
    )
    subpixel: Literal["fourier", "off"] = Field(
        "fourier",
        description="Sub-pixel positions: fourier (phase-ramp shift of the probe, exact "
        "band-limited interpolation) or off (positions rounded to whole pixels).",
    )
    object_margin: int = Field(8, ge=0, le=4096, description="Object pixels around the scan.")
    batch_size: int = Field(64, ge=1, le=65536, description="Views per vectorised batch.")


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
        message = f"{message} (got {first.get('input')!r})"
    return InputError(field, message)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses repeated keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"duplicate key {key!r} (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
            raise InputError("--set", f"expected section.key=value, got {item!r}")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(key, f"{part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(key, f"value {value!r} is not valid YAML") from None
    return raw


def load_config(path: Path | str, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (safe loader), apply overrides, validate.

    Relative paths in the file are taken relative to the file's folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("config", f"{path} does not exist")
    if not path.is_file():
        raise InputError("config", f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise InputError("config", f"{path} is not a readable UTF-8 text file ({err})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        raise InputError("config", f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError("config", f"{path} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("config", f"{path} must hold a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    config = parse_config(raw)
    return resolve_paths(config, path.parent)


def resolve_paths(config: Config, base: Path) -> Config:
    """Make relative data/output/initial paths relative to ``base``."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"path": fix(config.data.path)}),
            "output": config.output.model_copy(
                update={
                    "path": fix(config.output.path),
                    "checkpoint": fix(config.output.checkpoint),
                }
            ),
            "cluster": _resolve_security(config.cluster, fix),
            "initial": config.initial.model_copy(
                update={
                    "probe_path": fix(config.initial.probe_path),
                    "previous": fix(config.initial.previous),
                }
            ),
        }
    )


def _resolve_security(cluster: ClusterConfig, fix: Any) -> ClusterConfig:
    if cluster.security is None:
        return cluster
    tls = cluster.security
    fixed = tls.model_copy(
        update={
            "ca_file": fix(tls.ca_file),
            "cert_file": fix(tls.cert_file),
            "key_file": fix(tls.key_file),
        }
    )
    return cluster.model_copy(update={"security": fixed})
