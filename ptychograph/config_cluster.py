"""Configuration sections shared by every module, and the ``cluster`` section.

:class:`Section` is the base of every section model of :mod:`ptychograph.config`: frozen,
unknown keys rejected, booleans refused where numbers are expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Section(BaseModel):
    """Base of a YAML section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Reject ``true``/``false`` where a number is expected (pydantic would take 1/0)."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(f"expected a number, got {value!r}")
        return value


class SecurityConfig(Section):
    """TLS for a shared cluster (Dask's ``distributed.security.Security``)."""

    ca_file: Path = Field(description="Certificate authority (PEM) the scheduler's cert is from.")
    cert_file: Path = Field(description="This client's certificate (PEM).")
    key_file: Path | None = Field(None, description="Its private key (PEM), if not in cert_file.")
    require_encryption: bool = Field(True, description="Refuse unencrypted connections.")


class ClusterConfig(Section):
    """Where the work runs: a local Dask cluster, or an existing scheduler."""

    address: str | None = Field(
        None,
        description="null: start a local cluster; else a scheduler address such as "
        "tcp://host:8786 or ucx://host:8786 (started with `dask scheduler`).",
    )
    n_workers: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Workers: of the local cluster (default: one per GPU with the gpu extra "
        "and a GPU, else 1); with an address, use at most this many of its workers.",
    )
    threads_per_worker: int | None = Field(
        None, ge=1, le=1024, description="Threads per local worker (default: cores / workers)."
    )
    protocol: Literal["tcp", "ucx"] = Field(
        "tcp", description="Local cluster comms; ucx needs the distributed-ucxx package."
    )
    backend: Literal["auto", "numpy", "cupy"] = Field(
        "auto", description="Array backend on the workers; auto = cupy where a GPU exists."
    )
    connect_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds to wait for a scheduler before giving up."
    )
    lookahead: int = Field(
        2, ge=0, le=16, description="Iterations submitted ahead of the one being reported."
    )
    security: SecurityConfig | None = Field(
        None, description="TLS settings for connecting to a tls:// scheduler."
    )
    sync_every: int = Field(
        10,
        ge=1,
        le=1000,
        description="Iterations between client synchronisations: the estimates are fetched and "
        "re-sent, which cuts the task lineage so the scheduler's state stays bounded.",
    )
    worker_timeout: float = Field(
        60.0,
        ge=5,
        le=86400,
        description="Seconds a worker may go without a heartbeat (frozen, or its node "
        "unreachable) before the run treats it as lost and moves its frames to others; at "
        "least 5 (Dask's heartbeats come every 0.5-2 s, later on a busy machine, and a "
        "shorter limit takes live workers for lost ones).",
    )
    chunk_frames: int | None = Field(
        None, ge=1, description="Frames per Zarr chunk when converting (default: ~32 MB)."
    )

    @field_validator("address")
    @classmethod
    def _scheme(cls, address: str | None) -> str | None:
        if address is not None and not address.startswith(("tcp://", "ucx://", "tls://")):
            raise ValueError(f"expected tcp://, tls:// or ucx://host:port, got {address!r}")
        return address

    @model_validator(mode="after")
    def _tls_needs_security(self) -> ClusterConfig:
        is_tls = self.address is not None and self.address.startswith("tls://")
        if is_tls and self.security is None:
            raise ValueError("address: a tls:// scheduler needs cluster.security")
        if self.security is not None and not is_tls:
            raise ValueError("security: TLS settings need a tls:// address")
        return self
