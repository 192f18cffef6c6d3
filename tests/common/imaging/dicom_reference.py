"""Independent reference for fedtune's DICOM decoder (common/imaging/decode.h), built on pydicom.

  dicom_reference.py make OUTDIR        writes synthetic DICOM cases derived from pydicom's own test files
  dicom_reference.py expected IN OUT [IN OUT ...]
                                        writes the pixels pydicom says IN shows, in [0, 1], brighter = more attenuating

The expected values follow pydicom: pixel_array -> apply_modality_lut -> apply_voi_lut (first VOI LUT, else first
window; its output range, as pydicom defines it, maps to [0, 1]); without either, a min-max window; MONOCHROME1 is
then inverted. OUT is text: "WIDTH HEIGHT" on the first line, then one value per line.
"""
import copy
import os
import sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.dataset import Dataset


def expected(path):
    ds = pydicom.dcmread(path)
    modality = apply_modality_lut(ds.pixel_array, ds)
    arr = modality.astype(np.float64)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        out = apply_voi_lut(modality, ds, index=0).astype(np.float64)
        out = out / (2 ** int(item.LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_voi_lut(arr.copy(), ds, index=0).astype(np.float64)
        # pydicom's output range for a window (see pydicom.pixel_data_handlers.util.apply_windowing).
        bits = int(ds.BitsStored)
        if ds.PixelRepresentation == 0:
            y_min, y_max = 0, 2 ** bits - 1
        else:
            y_min, y_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out = (out - y_min) / (y_max - y_min)
    else:
        lo, hi = arr.min(), arr.max()
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return out


def write_expected(path, out_path):
    out = expected(path)
    with open(out_path, "w") as f:
        f.write("%d %d\n" % (out.shape[1], out.shape[0]))
        f.write("\n".join("%.9g" % v for v in out.ravel()))
        f.write("\n")


def set_pixels(ds, arr):
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape


def make(outdir):
    os.makedirs(outdir, exist_ok=True)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # signed 16-bit, rescale -1024, no window
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # signed 16-bit, window 600/1600

    # MONOCHROME1 with a window: a CR-like inverted image.
    ds = copy.deepcopy(ct)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.save_as(os.path.join(outdir, "mono1_window.dcm"))

    # MONOCHROME1 without a window: min-max, then inverted.
    ds = copy.deepcopy(ct)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(os.path.join(outdir, "mono1_minmax.dcm"))

    # Unsigned 12-bit data with a rescale and a VOI LUT Sequence (a gamma curve) next to a window: the LUT wins.
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:48, 0:40]
    raw = ((xx * 97 + yy * 31) % 4096 + rng.integers(0, 50, size=xx.shape)).clip(0, 4095).astype(np.uint16)
    base = copy.deepcopy(mr)
    base.PixelRepresentation = 0
    base.BitsAllocated = 16
    base.BitsStored = 12
    base.HighBit = 11
    set_pixels(base, raw)
    ds = copy.deepcopy(base)
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 65535).round().astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data; its VR is ambiguous (US or OW) until set.
    item.LUTExplanation = "gamma 0.5"
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(os.path.join(outdir, "voi_lut.dcm"))

    # Unsigned 12-bit with Rescale Slope/Intercept and a window (LINEAR).
    ds = copy.deepcopy(base)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -100
    ds.WindowCenter = 3000
    ds.WindowWidth = 5000
    ds.save_as(os.path.join(outdir, "rescale_window.dcm"))

    # The other VOI LUT Functions.
    for function in ("SIGMOID", "LINEAR_EXACT"):
        ds = copy.deepcopy(base)
        ds.WindowCenter = 2000
        ds.WindowWidth = 1500
        ds.VOILUTFunction = function
        ds.save_as(os.path.join(outdir, "window_%s.dcm" % function.lower()))

    # Explicit VR Big Endian with 16-bit samples in OB (not swapped by DCMTK, unlike OW).
    ds = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    ds["PixelData"].VR = "OB"
    ds.save_as(os.path.join(outdir, "bigendian_ob.dcm"), write_like_original=True)

    # Two frames: must be rejected.
    ds = copy.deepcopy(base)
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([raw, raw]).tobytes()
    ds.save_as(os.path.join(outdir, "two_frames.dcm"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) >= 4 and len(sys.argv) % 2 == 0 and sys.argv[1] == "expected":
        for i in range(2, len(sys.argv), 2):
            write_expected(sys.argv[i], sys.argv[i + 1])
    else:
        sys.exit(__doc__)
