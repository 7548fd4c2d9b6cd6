"""Frames stores (ptychograph.io.zarr_store): CXI -> chunked Zarr -> Scan, chunking, refusals."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs

from ptychograph.errors import InputError
from ptychograph.io import convert_to_store, load_scan, read_cxi, write_cxi
from ptychograph.io.zarr_store import (
    FORMAT,
    FORMAT_VERSION,
    chunk_ranges,
    default_chunk_frames,
    read_frames,
    read_store_info,
    read_store_scan,
    write_frames_store,
)
from ptychograph.scan import HC_EV_M, Geometry, Scan

N, H, W = 11, 16, 12


def make_scan(seed: int = 0, n_frames: int = N) -> Scan:
    """Synthetic scan: Poisson frames (N, 16, 12), distinct positions, mask, 2 probe modes."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(40.0, size=(n_frames, H, W)).astype(np.float32)
    positions = np.stack(
        [np.arange(n_frames) * 1.3e-6, (np.arange(n_frames) % 4) * -0.7e-6 + 1e-7], axis=1
    )
    geometry = Geometry(
        wavelength=HC_EV_M / 7100.0,
        distance=3.25,
        detector_pixel=(75e-6, 55e-6),
        frame_shape=(H, W),
    )
    mask = np.zeros((H, W), dtype=bool)
    mask[2, 3] = mask[:, -1] = True
    shape = (2, H, W)
    probe = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    return Scan(frames, positions, geometry, mask, probe)


@pytest.fixture
def cxi_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan.cxi"
    write_cxi(path, make_scan())
    return path


@pytest.fixture
def store(tmp_path: Path, cxi_file: Path) -> Path:
    """A frames store converted from ``cxi_file`` with 4 frames per chunk (3 chunks)."""
    path = tmp_path / "scan.zarr"
    assert convert_to_store(cxi_file, path, chunk_frames=4) == []
    return path


def assert_scans_equal(got: Scan, want: Scan) -> None:
    """Bit-for-bit equal frames, positions, mask, illumination and geometry."""
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.frames.dtype == np.float32
    np.testing.assert_array_equal(got.positions, want.positions)
    assert got.positions.dtype == np.float64
    assert got.geometry == want.geometry  # exact float equality of every field
    assert got.mask is not None and want.mask is not None
    assert got.mask.dtype == bool
    np.testing.assert_array_equal(got.mask, want.mask)
    assert got.illumination is not None and want.illumination is not None
    assert got.illumination.dtype == np.complex64
    np.testing.assert_array_equal(got.illumination, want.illumination)


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip_is_exact(store: Path, cxi_file: Path) -> None:
    assert_scans_equal(read_store_scan(store), read_cxi(cxi_file))
    attrs: dict[str, Any] = zarr.open_group(store, mode="r").attrs.asdict()
    assert attrs["format"] == FORMAT and attrs["format_version"] == FORMAT_VERSION
    assert set(attrs["geometry"]) == {
        "wavelength_m",
        "distance_m",
        "detector_pixel_m",
        "frame_shape",
    }
    assert attrs["geometry"]["frame_shape"] == [H, W]
    assert "ptychograph_version" in attrs


def test_round_trip_without_extras(tmp_path: Path) -> None:
    scan = dataclasses.replace(make_scan(), mask=None, illumination=None)
    write_frames_store(scan, tmp_path / "s.zarr")
    got = read_store_scan(tmp_path / "s.zarr")
    assert got.mask is None and got.illumination is None
    np.testing.assert_array_equal(got.frames, scan.frames)
    assert got.geometry == scan.geometry


def test_load_scan_dispatches_to_store(store: Path, cxi_file: Path) -> None:
    assert_scans_equal(load_scan(store), load_scan(cxi_file))


def test_store_info_without_frames(store: Path, cxi_file: Path) -> None:
    info = read_store_info(store)
    want = read_cxi(cxi_file)
    assert (info.n_frames, info.frame_shape, info.chunk_frames) == (N, (H, W), 4)
    assert info.path == store
    np.testing.assert_array_equal(info.positions, want.positions)
    assert info.geometry == want.geometry


def test_frames_chunked_and_compressed(store: Path) -> None:
    frames = zarr.open_array(store, path="frames", mode="r")
    assert frames.chunks == (4, H, W)
    assert frames.dtype == np.float32
    codec, checksum = frames.compressors
    assert isinstance(codec, zarr.codecs.BloscCodec)
    assert isinstance(checksum, zarr.codecs.Crc32cCodec)  # a damaged chunk is always refused
    assert codec.cname.value == "zstd" and codec.shuffle is not None
    assert codec.shuffle.value == "bitshuffle"
    # 11 frames in chunks of 4: three chunk files
    assert chunk_ranges(N, 4) == [(0, 4), (4, 8), (8, 11)]


def test_default_chunking(tmp_path: Path, cxi_file: Path) -> None:
    path = tmp_path / "default.zarr"
    convert_to_store(cxi_file, path)
    # 16 x 12 float32 frames are tiny: the whole scan fits in one ~32 MiB chunk
    assert zarr.open_array(path, path="frames", mode="r").chunks == (N, H, W)
    small_target = default_chunk_frames((H, W), target_bytes=3 * H * W * 4 + 5)
    write_frames_store(make_scan(), tmp_path / "small.zarr", chunk_frames=small_target)
    assert zarr.open_array(tmp_path / "small.zarr", path="frames", mode="r").chunks == (3, H, W)


@pytest.mark.parametrize(
    ("frame_shape", "expected"),
    [((256, 256), 128), ((1024, 1024), 8), ((2048, 2048), 2), ((8192, 8192), 1), ((1, 1), 2**23)],
)
def test_default_chunk_frames(frame_shape: tuple[int, int], expected: int) -> None:
    assert default_chunk_frames(frame_shape) == expected


@pytest.mark.parametrize("chunk", [1, 3, 4, 11, 50])
def test_chunk_ranges_cover_frames(chunk: int) -> None:
    ranges = chunk_ranges(N, chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == N
    assert all(stop - start <= chunk for start, stop in ranges)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


@pytest.mark.parametrize(("start", "stop"), [(0, 4), (3, 9), (8, 11), (5, 5), (0, N)])
def test_read_frames_range(store: Path, start: int, stop: int) -> None:
    want = make_scan().frames[start:stop]
    got = read_frames(store, start, stop)
    assert got.shape == (stop - start, H, W) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_read_frames_rejects_bad_range(store: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        read_frames(store, 5, N + 1)


def test_read_frames_in_another_process(store: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(read_frames, (store, 4, 8))
    np.testing.assert_array_equal(got, make_scan().frames[4:8])


def test_refuses_to_overwrite(store: Path, cxi_file: Path) -> None:
    before = read_frames(store, 0, N)
    with pytest.raises(InputError, match="exists; pass --overwrite") as info:
        convert_to_store(cxi_file, store)
    assert info.value.field == "output"
    np.testing.assert_array_equal(read_frames(store, 0, N), before)


def test_overwrite_replaces(store: Path, tmp_path: Path) -> None:
    other = make_scan(seed=5, n_frames=7)
    write_frames_store(other, store, chunk_frames=2, overwrite=True)
    np.testing.assert_array_equal(read_store_scan(store).frames, other.frames)
    assert read_store_info(store).chunk_frames == 2
    assert hidden_leftovers(tmp_path) == []


def test_overwrite_refuses_unrelated_directory(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not written by ptychograph"):
        write_frames_store(make_scan(), folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def nan_cxi(tmp_path: Path) -> Path:
    scan = make_scan()
    frames = scan.frames.copy()
    frames[2, 5, 5] = np.nan
    path = tmp_path / "nan.cxi"
    write_cxi(path, dataclasses.replace(scan, frames=frames))
    return path


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    source = nan_cxi(tmp_path)
    with pytest.raises(InputError, match="NaN"):
        convert_to_store(source, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
    assert hidden_leftovers(tmp_path) == []


def test_failure_while_writing_keeps_existing_target(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = read_frames(store, 0, N)

    def broken(*args: object) -> dict[str, object]:
        raise RuntimeError("disk full")

    monkeypatch.setattr("ptychograph.io.zarr_store._root_attrs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_frames_store(make_scan(seed=9), store, overwrite=True)
    np.testing.assert_array_equal(read_frames(store, 0, N), before)
    assert hidden_leftovers(tmp_path) == []


def test_nonfinite_drop_converts_with_note(tmp_path: Path) -> None:
    source = nan_cxi(tmp_path)
    notes = convert_to_store(source, tmp_path / "out.zarr", nonfinite="drop")
    assert len(notes) == 1 and "dropped 1 frame" in notes[0] and "[2]" in notes[0]
    got = read_store_scan(tmp_path / "out.zarr")
    want = make_scan()
    keep = np.arange(N) != 2
    np.testing.assert_array_equal(got.frames, want.frames[keep])
    np.testing.assert_array_equal(got.positions, read_cxi(source).positions[keep])


def test_bad_chunk_frames(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="chunk_frames"):
        write_frames_store(make_scan(), tmp_path / "s.zarr", chunk_frames=0)
    assert not (tmp_path / "s.zarr").exists()


def edit_attrs(store: Path, **changes: object) -> None:
    """Rewrite root attributes in zarr.json (as another tool or an old version might)."""
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(changes)
    meta_path.write_text(json.dumps(meta))


def break_plain_directory(store: Path) -> None:
    shutil.rmtree(store)
    store.mkdir()
    (store / "zarr.json").write_text("not json")


def break_missing_positions(store: Path) -> None:
    shutil.rmtree(store / "positions")


def break_missing_frames(store: Path) -> None:
    shutil.rmtree(store / "frames")


def break_format(store: Path) -> None:
    edit_attrs(store, format="something-else")


def break_version(store: Path) -> None:
    edit_attrs(store, format_version=FORMAT_VERSION + 1)


def break_count(store: Path) -> None:
    group = zarr.open_group(store, mode="a")
    del group["positions"]
    group.create_array("positions", data=np.zeros((N - 1, 2)))


def break_rank(store: Path) -> None:
    group = zarr.open_group(store, mode="a")
    del group["positions"]
    group.create_array("positions", data=np.zeros(N))


def break_geometry(store: Path) -> None:
    geometry: Any = zarr.open_group(store, mode="r").attrs["geometry"]
    edit_attrs(store, geometry={**geometry, "distance_m": float("nan")})


def break_geometry_keys(store: Path) -> None:
    edit_attrs(store, geometry={"wavelength_m": 1e-10})


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        (break_plain_directory, "not a Zarr store"),
        (break_missing_positions, "missing array 'positions'"),
        (break_missing_frames, "missing array 'frames'"),
        (break_format, "not a ptychograph frames store"),
        (break_version, "format_version"),
        (break_count, "10 rows but 'frames' has 11 frames"),
        (break_rank, "expected (N, 2)"),
        (break_geometry, "distance_m must be positive and finite"),
        (break_geometry_keys, "geometry attribute"),
    ],
)
def test_bad_store_refused(store: Path, corrupt: Callable[[Path], None], needle: str) -> None:
    corrupt(store)
    for reader in (read_store_info, read_store_scan, load_scan):
        with pytest.raises(InputError) as info:
            reader(store)
        assert info.value.field == "data.path"
        assert str(store) in info.value.problem and needle in info.value.problem
        assert "\n" not in str(info.value)


def test_plain_directory_is_not_a_store(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InputError, match="not a Zarr store") as info:
        read_store_info(folder)
    assert info.value.field == "data.path"
    with pytest.raises(InputError, match="is not a file") as info:
        load_scan(folder)
    assert info.value.field == "data.path"


def test_missing_chunk_file_is_refused_not_read_as_zeros(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.io.store_check import check_store_frames
    from ptychograph.io.zarr_store import write_frames_store
    from ptychograph.simulate import SimulationConfig, simulate

    scan = simulate(SimulationConfig(n_frames=12, frame_size=16, photons=1e4)).scan
    store = tmp_path / "f.zarr"
    write_frames_store(scan, store, chunk_frames=4)
    assert check_store_frames(store).nonfinite_frames == []
    chunk = next(p for p in (store / "frames" / "c").rglob("*") if p.is_file())
    chunk.unlink()
    assert len(check_store_frames(store).nonfinite_frames) == 4


def test_a_store_whose_mask_marks_every_pixel_bad_is_refused(tmp_path: Path) -> None:
    """The run path that uses a frames store as it is (no conversion) refuses the mask too,
    before any cluster starts and without writing anything."""
    from ptychograph.config import parse_config
    from ptychograph.engine import reconstruct

    scan = make_scan()
    path = tmp_path / "frames.zarr"
    write_frames_store(dataclasses.replace(scan, mask=np.ones_like(scan.mask)), path)
    config = parse_config(
        {"data": {"path": str(path)}, "output": {"path": str(tmp_path / "r.zarr")}}
    )
    with pytest.raises(InputError, match="every detector pixel is masked bad"):
        reconstruct(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.zarr"]
