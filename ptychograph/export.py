"""``ptychograph export result.zarr out.cxi``: a result store as a CXI (HDF5) file.

The layout follows CXI 1.5 for reconstructed images, as PyNX and other CXI tools read them:

* ``/entry_1/image_1/data`` the object (obj_mode, y, x) complex64, ``/entry_1/object`` a link
  to ``image_1``, ``/entry_1/data_1/data`` a link to its data (the entry's default signal);
* ``/entry_1/image_2/data`` the probe modes (probe_mode, py, px) complex64, linked from
  ``/entry_1/probe``;
* each image has ``data_space`` ("real"), ``data_type``, ``x_pixel_size``/``y_pixel_size``
  and ``image_size`` (m), ``row_coords``/``col_coords`` (m, the store's y and x) and, for the
  object, ``illumination`` and ``mask`` (lit pixels, bit 0x1000 as in CXI);
* ``/entry_1/sample_1/geometry_1/translation`` (N, 3) positions (x, y, 0) in metres, as in
  the scan files ptychograph reads; ``/entry_1/instrument_1`` the energy (J), detector
  distance and pixel size (m);
* ``/entry_1/image_1/process_1``: program, version, the run's config (JSON) and the per-
  iteration metrics with their definitions.

Row 0 of every image is row 0 of the store (the top as drawn by ``imshow``). The file is
written beside the target and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from ptychograph.errors import InputError
from ptychograph.figures_common import (
    ILLUMINATED_FRACTION,
    illuminated_mask,
    illumination_map,
)
from ptychograph.paths import check_folder, check_replaceable, clean_leftovers
from ptychograph.results import open_result
from ptychograph.scan import EV_J
from ptychograph.version import __version__

CXI_VERSION = 150
#: CXI pixel flag "signal above background", used to mark the illuminated object pixels.
CXI_HAS_SIGNAL = 0x1000
METRICS = ("fourier_error", "probe_change", "object_change", "iteration_seconds")


def export_cxi(result: Path, target: Path, overwrite: bool = False) -> None:
    """Write the result store ``result`` as the CXI file ``target`` (see module docstring).
    ``overwrite`` replaces only an earlier export, never a scan or another file."""
    ds = _open(result)
    _check_target(result, target, overwrite)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with h5py.File(tmp, "w") as file:
            write_entry(file, ds)
        os.replace(tmp, target)
    except OSError as err:  # disk full, permissions: one line (issue 11, item 12)
        raise InputError("target", f"could not write {target} ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_entry(file: h5py.File, ds: xr.Dataset) -> None:
    """Fill an open HDF5 file with ``/cxi_version`` and ``/entry_1`` from a result Dataset."""
    geometry = ds.attrs.get("geometry", {})
    pixel_y, pixel_x = (float(v) for v in geometry["object_pixel_m"])
    file.attrs["creator"] = f"ptychograph {__version__}"
    file.attrs["default"] = "entry_1"
    file.create_dataset("cxi_version", data=CXI_VERSION)
    entry = file.create_group("entry_1")
    entry.attrs.update(NX_class="NXentry", default="data_1")
    entry.create_dataset("program_name", data=f"ptychograph {__version__}")
    obj = np.asarray(ds["object"].values).astype(np.complex64)
    probe = np.asarray(ds["probe"].values).astype(np.complex64)
    image = _image(entry, "image_1", obj, "object", (pixel_y, pixel_x))
    image.create_dataset("row_coords", data=np.asarray(ds["y"].values))
    image.create_dataset("col_coords", data=np.asarray(ds["x"].values))
    for name in ("row_coords", "col_coords"):
        image[name].attrs["units"] = "m"
    lit = illumination_map(probe, np.asarray(ds["view_origin"].values), obj.shape[1:])
    image.create_dataset("illumination", data=lit.astype(np.float32), compression="gzip")
    mask = np.where(illuminated_mask(lit), CXI_HAS_SIGNAL, 0).astype(np.uint32)
    image.create_dataset("mask", data=mask, compression="gzip")
    image["mask"].attrs["note"] = (
        f"0x1000 = illuminated (>= {ILLUMINATED_FRACTION:.0%} of the peak illumination)"
    )
    _process(image, ds)
    probe_image = _image(entry, "image_2", probe, "probe", (pixel_y, pixel_x))
    probe_image.create_dataset("row_coords", data=np.asarray(ds["py"].values))
    probe_image.create_dataset("col_coords", data=np.asarray(ds["px"].values))
    probe_image.create_dataset("mode_power", data=np.asarray(ds["probe_mode_power"].values))
    entry["object"] = h5py.SoftLink("/entry_1/image_1")
    entry["probe"] = h5py.SoftLink("/entry_1/image_2")
    data = entry.create_group("data_1")
    data.attrs.update(NX_class="NXdata", signal="data")
    data["data"] = h5py.SoftLink("/entry_1/image_1/data")
    _instrument(entry, geometry)
    positions = np.asarray(ds["position"].values)
    translation = np.zeros((positions.shape[0], 3))
    translation[:, 0], translation[:, 1] = positions[:, 1], positions[:, 0]
    sample = entry.create_group("sample_1")
    sample.attrs["NX_class"] = "NXsample"
    sample.create_group("geometry_1").create_dataset("translation", data=translation)
    sample["geometry_1/translation"].attrs["units"] = "m"


def _image(entry: Any, name: str, data: np.ndarray, kind: str, pixel: tuple[float, float]) -> Any:
    image = entry.create_group(name)
    image.attrs.update(NX_class="NXdata", signal="data")
    image.create_dataset("data", data=data, compression="gzip")
    image["data"].attrs["interpretation"] = "image"
    image.create_dataset("data_space", data="real")
    image.create_dataset("data_type", data=kind)
    image.create_dataset("x_pixel_size", data=pixel[1])
    image.create_dataset("y_pixel_size", data=pixel[0])
    image.create_dataset("image_size", data=[pixel[1] * data.shape[-1], pixel[0] * data.shape[-2]])
    for field in ("x_pixel_size", "y_pixel_size", "image_size"):
        image[field].attrs["units"] = "m"
    return image


def _instrument(entry: Any, geometry: dict[str, Any]) -> None:
    instrument = entry.create_group("instrument_1")
    instrument.attrs["NX_class"] = "NXinstrument"
    source = instrument.create_group("source_1")
    source.create_dataset("energy", data=float(geometry["energy_ev"]) * EV_J)
    source["energy"].attrs["units"] = "J"
    detector = instrument.create_group("detector_1")
    detector.create_dataset("distance", data=float(geometry["distance_m"]))
    pixel_y, pixel_x = (float(v) for v in geometry["detector_pixel_m"])
    detector.create_dataset("x_pixel_size", data=pixel_x)
    detector.create_dataset("y_pixel_size", data=pixel_y)
    for field in ("distance", "x_pixel_size", "y_pixel_size"):
        detector[field].attrs["units"] = "m"


def _process(image: Any, ds: xr.Dataset) -> None:
    process = image.create_group("process_1")
    process.attrs["NX_class"] = "NXprocess"
    process.create_dataset("program", data="ptychograph")
    process.create_dataset("version", data=str(ds.attrs.get("ptychograph_version", "")))
    process.create_dataset("configuration", data=json.dumps(ds.attrs.get("config", {})))
    results = process.create_group("results")
    for name in METRICS:
        if name in ds:
            results.create_dataset(name, data=np.asarray(ds[name].values))
            for key in ("units", "long_name", "definition"):
                if key in ds[name].attrs:
                    results[name].attrs[key] = ds[name].attrs[key]


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise InputError("result", f"{path} does not exist")
    try:
        ds = open_result(path)
    except (OSError, ValueError, KeyError) as err:
        raise InputError("result", f"{path} is not a result store ({err})") from None
    needed = ("object", "probe", "view_origin", "position", "probe_mode_power")
    missing = [name for name in needed if name not in ds]
    if missing or "object_pixel_m" not in ds.attrs.get("geometry", {}):
        raise InputError("result", f"{path} lacks {', '.join(missing) or 'its geometry'}")
    return ds


def _check_target(result: Path, target: Path, overwrite: bool) -> None:
    if target.suffix.lower() not in (".cxi", ".h5", ".hdf5"):
        raise InputError("target", f"must end in .cxi (or .h5), got {target.name!r}")
    check_folder(target, "target")  # missing, a file, not writable, /proc
    if target.resolve() == result.resolve():
        raise InputError("target", "must differ from the result store")
    check_replaceable(target, "export", overwrite, "target")  # only an earlier export
    clean_leftovers([target], {target: "export"}, "target")  # of a killed export
