"""Simulator, geometry/orientation and initial guesses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptychograph.cli import main
from ptychograph.config import parse_config
from ptychograph.engine import reconstruct
from ptychograph.errors import InputError
from ptychograph.geometry import object_shape, view_origins
from ptychograph.initial import add_modes, probe_from_data
from ptychograph.io import load_scan
from ptychograph.modes import power_shares
from ptychograph.problem import initial_probe, prepare
from ptychograph.simulate import SimulationConfig, simulate


def test_simulated_counts_noise_and_geometry() -> None:
    sim = simulate(SimulationConfig(n_frames=25, frame_size=32, photons=1e5, scan="raster"))
    frames = sim.scan.frames
    assert frames.shape == (25, 32, 32)
    assert np.all(frames == np.round(frames))  # Poisson counts
    assert frames.sum(axis=(1, 2)).mean() == pytest.approx(1e5, rel=0.02)
    probe = np.abs(sim.probe[0]) ** 2
    assert probe[[0, -1], :].sum() + probe[:, [0, -1]].sum() < 1e-6 * probe.sum()  # fits
    pixel = sim.scan.geometry.object_pixel
    np.testing.assert_allclose(view_origins(sim.scan.positions, pixel, 8), sim.origins)


def test_fly_scan_blurs_the_data() -> None:
    step = simulate(SimulationConfig(n_frames=16, frame_size=32, photons=None))
    fly = simulate(SimulationConfig(n_frames=16, frame_size=32, photons=None, fly_blur=8.0))
    # averaging over sub-positions lowers the speckle contrast of every frame
    contrast = [np.std(s.scan.frames) / np.mean(s.scan.frames) for s in (step, fly)]
    assert contrast[1] < contrast[0]
    np.testing.assert_allclose(step.scan.positions, fly.scan.positions)


def test_texture_phantom_has_structure_everywhere(tmp_path: Path) -> None:
    """The textured object's amplitude and phase span their ranges, vary in both directions
    in every 16-pixel block (the star and text leave blocks flat), change with the seed, and
    the CLI writes such a scan."""
    config = SimulationConfig(n_frames=100, frame_size=32, photons=None, phantom="texture")
    obj = simulate(config).obj[0]
    assert np.abs(obj).min() == pytest.approx(0.6) and np.abs(obj).max() == pytest.approx(1.0)
    assert np.angle(obj).min() == pytest.approx(0.0, abs=1e-12)
    assert np.angle(obj).max() == pytest.approx(1.0)
    star = simulate(config.model_copy(update={"phantom": "star-text"})).obj[0]

    def flattest(image: np.ndarray) -> float:
        rows, cols = (np.abs(np.gradient(image, axis=a)) for a in (0, 1))
        blocks = [
            min(rows[y : y + 16, x : x + 16].mean(), cols[y : y + 16, x : x + 16].mean())
            for y in range(0, image.shape[0] - 15, 16)
            for x in range(0, image.shape[1] - 15, 16)
        ]
        return float(min(blocks))

    assert flattest(obj) > 0.01 > flattest(star)
    other = simulate(config.model_copy(update={"seed": 1})).obj[0]
    assert not np.allclose(np.abs(other[:20, :20]), np.abs(obj[:20, :20]))
    out = tmp_path / "t.cxi"
    args = ["simulate", str(out), "--frames", "9", "--size", "32", "--phantom", "texture"]
    assert main(args) == 0
    assert load_scan(out).frames.shape == (9, 32, 32)


def test_orientation_options() -> None:
    positions = np.array([[0.0, 0.0], [1e-8, 3e-8], [2e-8, 1e-8]])
    base = view_origins(positions, (1e-8, 1e-8), margin=2)
    np.testing.assert_allclose(base, [[2, 2], [3, 5], [4, 3]])
    flipped = view_origins(positions, (1e-8, 1e-8), margin=2, flip_x=True)
    np.testing.assert_allclose(flipped[:, 1], [5, 2, 4])
    swapped = view_origins(positions, (1e-8, 1e-8), margin=2, swap_xy=True)
    np.testing.assert_allclose(swapped, base[:, ::-1])
    assert object_shape(base, (16, 16), 2) == (4 + 16 + 3, 5 + 16 + 3)
    with pytest.raises(InputError, match="positions"):
        object_shape(np.array([[0.0, 0.0], [2e5, 0.0]]), (16, 16), 2)


def test_probe_from_data_matches_mean_power_and_pattern() -> None:
    sim = simulate(SimulationConfig(n_frames=20, frame_size=32, photons=None))
    probe = probe_from_data(sim.scan.frames)
    mean_counts = sim.scan.frames.sum(axis=(1, 2)).mean()
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(mean_counts, rel=1e-6)
    centred_far_field = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe), norm="ortho")))
    np.testing.assert_allclose(
        centred_far_field**2, sim.scan.frames.mean(axis=0), rtol=1e-5, atol=1e-6 * mean_counts
    )


def test_extra_modes_are_weak_orthogonal_and_seeded() -> None:
    base = simulate(SimulationConfig(n_frames=4, frame_size=32)).probe
    one = add_modes(base, 4, 0.05, np.random.default_rng(1))
    two = add_modes(base, 4, 0.05, np.random.default_rng(1))
    np.testing.assert_array_equal(one, two)
    gram = one.reshape(4, -1) @ one.reshape(4, -1).conj().T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9 * abs(gram).max())
    shares = power_shares(one)
    assert shares[0] > 0.8 and np.all(shares[1:] > 0.005)


def test_initial_probe_from_file_and_previous_result(tmp_path: Path) -> None:
    assert main(["simulate", str(tmp_path / "s.cxi"), "--frames", "20", "--size", "32"]) == 0
    scan = load_scan(tmp_path / "s.cxi")
    npy = tmp_path / "probe.npy"
    np.save(npy, scan.illumination[0] * 3)
    raw = {"data": {"path": str(tmp_path / "s.cxi")}}
    cfg = parse_config({**raw, "initial": {"probe": "file", "probe_path": str(npy)}})
    probe = initial_probe(scan, cfg, np.random.default_rng(0))
    expected = scan.illumination[0] / np.linalg.norm(scan.illumination[0])
    np.testing.assert_allclose(probe[0] / np.linalg.norm(probe[0]), expected, atol=1e-6)
    first = parse_config(
        {
            **raw,
            "reconstruction": {"iterations": 3, "probe_modes": 2},
            "output": {"path": str(tmp_path / "first.zarr")},
        }
    )
    done = reconstruct(first)
    again = parse_config(
        {
            **raw,
            "reconstruction": {"iterations": 1, "probe_modes": 2},
            "initial": {
                "probe": "previous",
                "object": "previous",
                "previous": str(tmp_path / "first.zarr"),
            },
        }
    )
    problem = prepare(scan, again)
    np.testing.assert_allclose(problem.state.obj, done.state.obj, rtol=1e-6)
    np.testing.assert_allclose(
        np.abs(problem.state.probe),
        np.abs(done.state.probe).astype(np.float32),
        rtol=1e-4,
        atol=1e-4 * np.abs(done.state.probe).max(),
    )
    wrong = parse_config({**raw, "initial": {"probe": "file", "probe_path": str(tmp_path)}})
    with pytest.raises(InputError, match="initial"):
        initial_probe(scan, wrong, np.random.default_rng(0))
