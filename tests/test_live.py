"""Growing frames stores (ptychograph.live): FrameWriter, the live mark, readers racing a
writer, ``simulate --live``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import CliResult, Workspace, write_yaml

from ptychograph.cli import main
from ptychograph.errors import InputError
from ptychograph.info import describe
from ptychograph.io import load_scan, write_frames_store
from ptychograph.io.live_mark import MARK_NAME
from ptychograph.io.store_check import fingerprint
from ptychograph.io.zarr_store import read_frames, read_store_info, read_store_scan
from ptychograph.live import FrameWriter
from ptychograph.scan import HC_EV_M, Geometry, Scan
from ptychograph.simulate import SimulationConfig, simulate

N, H, W = 37, 16, 12
GEOMETRY = Geometry(HC_EV_M / 7100.0, 3.25, (75e-6, 55e-6), (H, W))


def make_scan(n_frames: int = N) -> Scan:
    """Poisson frames (N, 16, 12), distinct positions, a mask and 2 probe modes."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(40.0, size=(n_frames, H, W)).astype(np.float32)
    positions = np.stack([np.arange(n_frames) * 1.3e-6, (np.arange(n_frames) % 4) * -7e-7], 1)
    mask = np.zeros((H, W), dtype=bool)
    mask[2, 3] = mask[:, -1] = True
    probe = (rng.normal(size=(2, H, W)) + 1j * rng.normal(size=(2, H, W))).astype(np.complex64)
    return Scan(frames, positions, GEOMETRY, mask, probe)


def writer(path: Path, **options: Any) -> FrameWriter:
    return FrameWriter(path, GEOMETRY, (H, W), **{"chunk_frames": 4, **options})


def signed(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose every pixel is their index, positions (index * 1e-7, 0): a signature."""
    index = np.arange(start, stop, dtype=np.float64)
    frames = np.broadcast_to(index[:, None, None], (stop - start, H, W)).astype(np.float32)
    return frames, np.stack([index * 1e-7, np.zeros_like(index)], axis=1)


def test_closed_store_reads_like_a_converted_one(tmp_path: Path) -> None:
    scan = make_scan()
    write_frames_store(scan, tmp_path / "converted.zarr", chunk_frames=8)
    live = tmp_path / "live.zarr"
    with FrameWriter(
        live, GEOMETRY, (H, W), 8, expected_frames=N, mask=scan.mask, illumination=scan.illumination
    ) as stream:
        start = 0
        for size in (1, 5, 13, 2, 16):  # blocks across chunk boundaries, then single frames
            stream.append(scan.frames[start : start + size], scan.positions[start : start + size])
            start += size
        assert start == N
    ours, theirs = read_store_info(live), read_store_info(tmp_path / "converted.zarr")
    assert ours.live is not None and ours.live.complete and ours.live.expected_frames == N
    assert theirs.live is None
    for field in ("n_frames", "frame_shape", "chunk_frames", "geometry"):
        assert getattr(ours, field) == getattr(theirs, field), field
    for field in ("positions", "mask", "illumination"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), field)
    np.testing.assert_array_equal(read_store_scan(live).frames, scan.frames)
    np.testing.assert_array_equal(read_frames(live, 5, 30), read_frames(theirs.path, 5, 30))
    assert fingerprint(live) == fingerprint(theirs.path)  # what a run and --resume go by
    np.testing.assert_array_equal(load_scan(live).frames, scan.frames)


def test_a_growing_store_shows_only_whole_published_chunks(tmp_path: Path) -> None:
    path = tmp_path / "scan.zarr"
    stream = writer(path, expected_frames=20)
    with pytest.raises(InputError, match="no frames published yet"):
        read_store_info(path)  # the store exists at once, empty
    stream.append(*signed(0, 6))
    info = read_store_info(path)
    assert (info.n_frames, stream.frames_published, stream.frames_appended) == (4, 4, 6)
    assert info.live is not None and info.live.growing and info.live.expected_frames == 20
    np.testing.assert_array_equal(info.positions, signed(0, 4)[1])
    with pytest.raises(InputError, match="frame range 0:5 outside 0:4"):
        read_frames(path, 0, 5)  # frames 4 and 5 are still in the writer's buffer
    assert "written live: live, 4 of 20 frames so far" in describe(path).splitlines()[0]
    stream.append(*signed(6, 9))
    assert read_store_info(path).n_frames == 8
    stream.close()
    info = read_store_info(path)
    assert info.n_frames == 9 and info.live is not None and info.live.complete
    assert info.live.expected_frames == 20  # fewer than expected is still complete
    np.testing.assert_array_equal(read_frames(path, 0, 9), signed(0, 9)[0])
    assert "written live: complete, 9 frames" in describe(path).splitlines()[0]
    stream.close()  # a second close changes nothing
    assert json.loads((path / MARK_NAME).read_text())["frames"] == 9


def test_more_frames_than_expected_are_refused(tmp_path: Path) -> None:
    stream = writer(tmp_path / "scan.zarr", expected_frames=5)
    stream.append(*signed(0, 3))
    with pytest.raises(InputError, match="6 frames would exceed expected_frames=5"):
        stream.append(*signed(3, 6))
    stream.append(*signed(3, 5))
    stream.close()
    assert read_store_info(tmp_path / "scan.zarr").n_frames == 5


def test_an_error_in_the_scan_publishes_its_frames_without_the_completion_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scan.zarr"
    with pytest.raises(RuntimeError, match="beam lost"), writer(path) as stream:
        stream.append(*signed(0, 6))
        raise RuntimeError("beam lost")
    info = read_store_info(path)
    assert info.n_frames == 6 and info.live is not None and info.live.growing
    with pytest.raises(InputError, match="is closed"):
        stream.append(*signed(6, 7))


def with_nan() -> np.ndarray:
    """Three frames, the second (frame 3 of the store after 2 good ones) with a NaN pixel."""
    frames = np.ones((3, H, W))
    frames[1, 4, 4] = np.nan
    return frames


BAD_APPENDS: dict[str, tuple[Callable[[], tuple[Any, Any]], str, str]] = {
    "frame shape": (lambda: (np.ones((2, H, W + 1)), np.ones((2, 2))), "frames", r"\(2, 16, 13\)"),
    "no frames": (lambda: (np.ones((0, H, W)), np.ones((0, 2))), "frames", "n >= 1"),
    "text frames": (lambda: (np.full((1, H, W), "a"), np.ones((1, 2))), "frames", "dtype"),
    "NaN frame": (lambda: (with_nan(), signed(2, 5)[1]), "frames", "frame 3 contains NaN"),
    "negative": (lambda: (-np.ones((1, H, W)), np.ones((1, 2))), "frames", "negative"),
    "positions shape": (lambda: (np.ones((3, H, W)), np.ones((3, 3))), "positions", r"\(3, 2\)"),
    "positions rows": (lambda: (np.ones((3, H, W)), np.ones((2, 2))), "positions", r"\(3, 2\)"),
    "inf position": (lambda: (np.ones((1, H, W)), [np.inf, 0.0]), "positions", "NaN or Inf"),
    "repeat earlier": (lambda: (np.ones((1, H, W)), [1e-7, 0]), "positions", "frame 2 repeats"),
    "repeat within": (lambda: (np.ones((2, H, W)), np.ones((2, 2))), "positions", "frame 3 repeat"),
}


@pytest.mark.parametrize("case", sorted(BAD_APPENDS))
def test_bad_appends_are_one_input_error_and_change_nothing(tmp_path: Path, case: str) -> None:
    make, field, needle = BAD_APPENDS[case]
    path = tmp_path / "scan.zarr"
    stream = writer(path)
    stream.append(*signed(0, 2))
    with pytest.raises(InputError, match=needle) as error:
        stream.append(*make())
    assert error.value.field == field
    assert stream.frames_appended == 2
    stream.append(*signed(2, 5))  # the writer goes on as if the bad call never happened
    stream.close()
    np.testing.assert_array_equal(read_store_scan(path).frames, signed(0, 5)[0])


def test_append_after_close_and_an_empty_close_are_refused(tmp_path: Path) -> None:
    stream = writer(tmp_path / "a.zarr")
    stream.append(*signed(0, 1))
    stream.close()
    with pytest.raises(InputError, match="is closed") as error:
        stream.append(*signed(1, 2))
    assert error.value.field == "append"
    empty = writer(tmp_path / "b.zarr")
    with pytest.raises(InputError, match="none were appended") as error:
        empty.close()
    assert error.value.field == "frames" and not (tmp_path / "b.zarr").exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"path": "scan.cxi"}, "path"),
        ({"frame_shape": (H, H)}, "frame_shape"),
        ({"chunk_frames": 0}, "chunk_frames"),
        ({"expected_frames": 0}, "expected_frames"),
        ({"mask": np.zeros((H, H), bool)}, "mask"),
        ({"mask": np.ones((H, W), bool)}, "mask"),  # every pixel bad
        ({"illumination": np.full((H, W), np.nan)}, "illumination"),
        ({"geometry": "8 keV"}, "geometry"),
    ],
)
def test_bad_writer_arguments(tmp_path: Path, options: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"geometry": GEOMETRY, "frame_shape": (H, W), **options}
    path = tmp_path / arguments.pop("path", "scan.zarr")
    with pytest.raises(InputError) as error:
        FrameWriter(path, **arguments)
    assert error.value.field == field
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_existing_store_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "scan.zarr"
    with writer(path) as stream:
        stream.append(*signed(0, 3))
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        writer(path)
    assert read_store_info(path).n_frames == 3
    with writer(path, overwrite=True) as stream:
        stream.append(*signed(10, 12))
    np.testing.assert_array_equal(read_store_scan(path).frames, signed(10, 12)[0])


@pytest.mark.parametrize(
    ("mark", "needle"),
    [
        ("{not json", "cannot be read"),
        ('{"format": "other"}', "not a ptychograph live mark"),
        (
            '{"format": "ptychograph-live", "format_version": 9, "frames": 1, '
            '"expected_frames": null, "complete": false}',
            "upgrade ptychograph",
        ),
        (
            '{"format": "ptychograph-live", "format_version": 1, "frames": 99, '
            '"expected_frames": null, "complete": true}',
            "counts 99 frames but the store holds 3",
        ),
        (
            '{"format": "ptychograph-live", "format_version": 1, "frames": 3, '
            '"expected_frames": 2, "complete": true}',
            "expected_frames 2",
        ),
    ],
)
def test_a_damaged_mark_is_one_input_error(tmp_path: Path, mark: str, needle: str) -> None:
    path = tmp_path / "scan.zarr"
    with writer(path) as stream:
        stream.append(*signed(0, 3))
    (path / MARK_NAME).write_text(mark)
    for read in (read_store_info, lambda p: read_frames(p, 0, 1)):
        with pytest.raises(InputError, match=needle) as error:
            read(path)
        assert error.value.field == "data.path"


#: A reader in another process: reads info and frames of a growing store until it is
#: complete, checks every frame's signature, prints {"reads": ..., "growing": ...}.
READER = """
import json, sys, time
import numpy as np
from ptychograph.cli import main
from ptychograph.errors import InputError
from ptychograph.io.zarr_store import read_frames, read_store_info
path, reads, growing = sys.argv[1], 0, 0
print("ready", flush=True)
while True:
    try:
        info = read_store_info(path)
    except InputError as err:
        assert "no frames published yet" in str(err), err
        continue
    n = info.n_frames
    index = np.arange(n)
    assert np.array_equal(info.positions[:, 0], index * 1e-7), n
    start = int(np.random.default_rng(reads).integers(0, n))
    assert np.array_equal(read_frames(path, start, n)[:, 0, 0], index[start:]), (start, n)
    reads += 1
    growing += info.live.growing
    if info.live.complete:
        break
    time.sleep(0.001)
print(json.dumps({"reads": reads, "growing": growing, "frames": n}))
"""


def test_readers_racing_a_writer_never_see_a_partial_chunk(tmp_path: Path) -> None:
    """A writer thread appends signed frames in uneven blocks (chunks of 5 frames); reader
    threads and a reader process read info and frames all along: every frame and position
    they get carries its own index, and none reads past the published count."""
    path, total = tmp_path / "scan.zarr", 300
    stream = writer(path, chunk_frames=5, expected_frames=total)
    process = subprocess.Popen(
        [sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    failures: list[BaseException] = []
    counts = {"reads": 0, "growing": 0}
    done = threading.Event()

    def read_all_along() -> None:
        try:
            while not done.is_set():
                info = read_store_info(path)
                index = np.arange(info.n_frames)
                np.testing.assert_array_equal(info.positions[:, 0], index * 1e-7)
                frames = read_frames(path, max(0, info.n_frames - 7), info.n_frames)
                np.testing.assert_array_equal(frames[:, 5, 5], index[-frames.shape[0] :])
                counts["reads"] += 1
                counts["growing"] += info.live is not None and info.live.growing
                time.sleep(0.001)
        except BaseException as err:  # reported by the test thread
            failures.append(err)

    stream.append(*signed(0, 5))  # a first chunk, so that readers start on a store
    readers = [threading.Thread(target=read_all_along) for _ in range(2)]
    for thread in readers:
        thread.start()
    rng = np.random.default_rng(0)
    start = 5
    while start < total:
        stop = min(total, start + int(rng.integers(1, 8)))
        stream.append(*signed(start, stop))
        start = stop
        time.sleep(0.002)
    stream.close()
    done.set()
    for thread in readers:
        thread.join()
    out, _ = process.communicate(timeout=120)
    assert not failures, failures[0]
    assert process.returncode == 0
    seen = json.loads(out)
    assert seen["frames"] == total and seen["growing"] >= 5, seen
    assert counts["growing"] >= 5, counts  # the threads did read while the store grew
    print(f"thread reads {counts}, process reads {seen}")


def test_simulate_live_writes_at_the_rate(tmp_path: Path) -> None:
    config = SimulationConfig(n_frames=120, frame_size=16, photons=1e4, seed=2)
    output, rate = tmp_path / "scan.zarr", 100.0
    options = "--frames 120 --size 16 --photons 1e4 --seed 2 --live --rate 100 --chunk-frames 8"
    sizes: list[int] = []
    thread = threading.Thread(target=main, args=(["simulate", str(output), *options.split()],))
    began = time.monotonic()
    thread.start()
    while thread.is_alive():
        try:
            info = read_store_info(output)
            sizes.append(info.n_frames if info.live and info.live.growing else -1)
        except InputError:
            pass  # not there yet, or no chunk published yet
        time.sleep(0.05)
    thread.join()
    elapsed = time.monotonic() - began
    assert elapsed >= 120 / rate  # frame i is appended no sooner than (i + 1) / rate
    assert elapsed < 120 / rate + 60  # loose: a shared, busy machine
    growing = [size for size in sizes if size > 0]
    assert len(set(growing)) >= 3 and max(growing) < 120  # seen growing chunk by chunk
    np.testing.assert_array_equal(read_store_scan(output).frames, simulate(config).scan.frames)
    info = read_store_info(output)
    assert info.live is not None and info.live.complete and info.live.expected_frames == 120
    assert (tmp_path / "scan-truth.npz").is_file()


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["out.cxi", "--rate", "5"], "--rate: only with --live"),
        (["out.cxi", "--chunk-frames", "5"], "--chunk-frames: only with --live"),
        (["out.zarr", "--live"], "--rate: is needed with --live"),
        (["out.zarr", "--live", "--rate", "0"], "--rate: must be a positive"),
        (["out.zarr", "--live", "--rate", "nan"], "--rate: must be a positive"),
        (["out.zarr", "--live", "--rate", "5", "--chunk-frames", "0"], "--chunk-frames"),
        (["out.cxi", "--live", "--rate", "5"], "output: with --live a frames store"),
    ],
)
def test_simulate_live_refuses_bad_options(
    tmp_path: Path, cli: Callable[..., CliResult], arguments: list[str], needle: str
) -> None:
    result = cli("simulate", tmp_path / arguments[0], *arguments[1:], "--frames", "20")
    result.assert_input_error(needle)
    assert list(tmp_path.iterdir()) == []


def test_run_takes_a_store_written_live(
    workspace: Workspace, cli: Callable[..., CliResult]
) -> None:
    """``ptychograph run`` reads a completed live store as it reads a converted one."""
    store = workspace.root / "live.zarr"
    result = cli("simulate", store, "--live", "--rate", "1000", "--frames", "30", "--size", "32")
    assert result.code == 0, result.stderr
    config = workspace.base_config()
    config["data"] = {"path": str(store)}
    write_yaml(workspace.config_path, config)
    result = cli("run", workspace.config_path)
    assert result.code == 0, result.stderr
    with xr.open_zarr(workspace.store, chunks=None, consolidated=False) as ds:
        assert ds["view_origin"].shape == (30, 2)
        errors = ds["fourier_error"].values
    assert errors.shape == (2,) and np.all(np.isfinite(errors)) and errors[1] < errors[0]
