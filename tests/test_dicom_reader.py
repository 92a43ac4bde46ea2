"""read_series on pydicom's real MR test files and on hand-made series with known geometry."""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from rsna2024.dicom import read_series
from rsna2024.dicom.reader import decode_pixels
from rsna2024.errors import DicomError
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice

# pydicom's bundled copies of the same 64x64 MR image (only names that ship with the package).
MR_SMALL_VARIANTS = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm"]


def _series_dir(tmp_path: Path, study: int = 1, series: int = 2) -> Path:
    folder = tmp_path / str(study) / str(series)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _reference() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)


# ---------------------------------------------------------------------------------------- lossless JPEG
def _jpeg_lossless(img: np.ndarray) -> bytes:
    """A minimal lossless JPEG (process 14, first-order predictor 1, one 16-bit component).

    Written here because no lossless-JPEG encoder is installed; the decoder under test (libjpeg via
    pylibjpeg) is independent of it. Huffman table: the 17 difference categories, 5-bit codes each.
    """
    a = img.astype(np.int64) & 0xFFFF
    pred = np.empty_like(a)
    pred[0, 0] = 1 << 15
    pred[0, 1:] = a[0, :-1]
    pred[1:, 0] = a[:-1, 0]
    pred[1:, 1:] = a[1:, :-1]
    diff = (a - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff).ravel()
    bits = []
    for d in diff.tolist():
        ssss = abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data += bytes([byte, 0]) if byte == 0xFF else bytes([byte])
    rows, cols = img.shape
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") \
        + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + bytes([0]) + bytes(counts) + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def _write_jpeg_lossless_copy(src: str, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    frame = _jpeg_lossless(ds.pixel_array)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(dst, enforce_file_format=True)
    return dst


# ---------------------------------------------------------------------------------------- transfer syntaxes
@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_every_bundled_transfer_syntax_decodes_to_the_same_pixels(tmp_path, name):
    folder = _series_dir(tmp_path)
    shutil.copy(get_testdata_file(name), folder / "1.dcm")
    series = read_series(folder)
    assert series.pixels.dtype == np.float32
    np.testing.assert_array_equal(series.pixels[0], _reference())


def test_jpeg_ls_decodes_to_the_same_pixels(tmp_path):
    """Needs pyjpegls (the ``dev`` extra): a missing decoder fails here instead of skipping."""
    folder = _series_dir(tmp_path)
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), folder / "1.dcm")
    np.testing.assert_array_equal(read_series(folder).pixels[0], _reference())


def test_jpeg_lossless_decodes_to_the_same_pixels(tmp_path):
    folder = _series_dir(tmp_path)
    path = _write_jpeg_lossless_copy(get_testdata_file("MR_small.dcm"), folder / "1.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(read_series(folder).pixels[0], _reference())


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_written_series_match_uncompressed(tmp_path, syntax):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4096, (64, 64))
    geo = SliceGeometry((0, 0, 0), (1, 0, 0), (0, 1, 0), (0.7, 0.7), 3.0)
    plain, packed = _series_dir(tmp_path, 1, 1), _series_dir(tmp_path, 1, 2)
    write_mr_slice(plain / "1.dcm", img, geo, instance_number=1, series_description="Axial T2", study_id=1,
                   series_id=1)
    write_mr_slice(packed / "1.dcm", img, geo, instance_number=1, series_description="Axial T2", study_id=1,
                   series_id=2, transfer_syntax=syntax)
    assert pydicom.dcmread(packed / "1.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_series(packed).pixels, read_series(plain).pixels)
    np.testing.assert_array_equal(read_series(plain).pixels[0], img)


@pytest.mark.parametrize("signed", [False, True])
def test_native_fast_path_equals_pydicom(tmp_path, signed):
    img = np.arange(600).reshape(20, 30) * 50 - (15000 if signed else 0)  # spans the sign bit when signed
    path = write_mr_slice(tmp_path / "a.dcm", img, SliceGeometry((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 1),
                          instance_number=1, series_description="Axial T2", study_id=1, series_id=1, signed=signed)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(decode_pixels(ds), ds.pixel_array)


# ---------------------------------------------------------------------------------------- geometry and order
def test_oblique_orientation_gives_the_hand_computed_affine(tmp_path):
    folder = _series_dir(tmp_path)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageOrientationPatient = [0.6, 0.8, 0, 0, 0, -1]
    ds.ImagePositionPatient = [10, -20, 30]
    ds.InstanceNumber = 7
    ds.save_as(folder / "x.dcm")
    s = read_series(folder)
    sp = 0.3125  # PixelSpacing of MR_small
    expected = np.array([[0.6 * sp, 0, -0.8, 10], [0.8 * sp, 0, 0.6, -20], [0, -sp, 0, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(s.slice_affine(0), expected, atol=1e-12)
    # pixel x=10, y=20: (10,-20,30) + 10*0.3125*(0.6,0.8,0) + 20*0.3125*(0,0,-1)
    np.testing.assert_allclose(s.to_patient(7, 10, 20), [11.875, -17.5, 23.75], atol=1e-9)
    inst, x, y, dist = s.from_patient([11.875 - 0.8 * 2, -17.5 + 0.6 * 2, 23.75])  # 2 mm along the normal
    assert (inst, round(x, 9), round(y, 9), round(dist, 9)) == (7, 10, 20, 2)


def _write_stack(folder: Path, positions, row_dir, col_dir, instance_numbers, shape=(16, 12), spacing=(0.5, 0.5),
                 rescale=None) -> dict[int, np.ndarray]:
    """Write one slice per position; file names are shuffled; slice k's pixels are all equal to 10*k."""
    names = [f"{random.Random(i).randint(0, 10**6)}_{i}.dcm" for i in range(len(positions))]
    random.Random(0).shuffle(names)
    pixels = {}
    for k, (pos, inst, name) in enumerate(zip(positions, instance_numbers, names)):
        img = np.full(shape, 10 * k + 5)
        pixels[inst] = img
        write_mr_slice(folder / name, img, SliceGeometry(pos, row_dir, col_dir, spacing, 4.0),
                       instance_number=inst, series_description="Sagittal T1", study_id=1, series_id=2,
                       rescale=rescale)
    return pixels


def test_slices_sorted_by_position_not_by_file_name_or_instance(tmp_path):
    folder = _series_dir(tmp_path)
    n = np.array([-0.8, 0.6, 0.0])  # normal of row (0.6, 0.8, 0) x col (0, 0, -1): towards patient right
    positions = [np.array([10.0, -20, 30]) + k * 4 * n for k in range(6)]
    instances = [205, 201, 210, 203, 202, 230]  # gapped, offset, unrelated to position
    _write_stack(folder, positions, (0.6, 0.8, 0), (0, 0, -1), instances)
    s = read_series(folder)
    # canonical sagittal order runs from patient right to left: k = 5 (rightmost) first
    assert s.instance_numbers.tolist() == instances[::-1]
    np.testing.assert_allclose(np.diff(s.slice_offsets), 4.0)
    assert s.pixels[:, 0, 0].tolist() == [55, 45, 35, 25, 15, 5]
    assert s.index_of(210) == 3
    np.testing.assert_allclose(s.series_normal, -n)
    assert s.slice_spacing == pytest.approx(4.0)
    assert (s.study_id, s.series_id, s.description) == (1, 2, "Sagittal T1")


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    folder = _series_dir(tmp_path)
    _write_stack(folder, [(0, 0, 0), (0, 0, 3)], (1, 0, 0), (0, 1, 0), [1, 2], rescale=(2.5, -100))
    s = read_series(folder)
    assert s.pixels[:, 3, 3].tolist() == [15 * 2.5 - 100, 5 * 2.5 - 100]  # axial: head (z = 3) first


def test_monochrome1_is_inverted_so_that_bright_stays_bright(tmp_path):
    """MONOCHROME1 displays its lowest value white: the reader negates the rescaled values, so after the cache's
    normalisation a MONOCHROME1 series equals the MONOCHROME2 series with inverted stored values."""
    from rsna2024.dicom.normalize import NormalizeParams, intensity_range, normalize

    img = np.arange(16 * 12).reshape(16, 12) % 97
    series = {}
    for photometric, stored in (("MONOCHROME1", img), ("MONOCHROME2", 200 - img)):
        folder = _series_dir(tmp_path / photometric)
        for k in range(2):
            path = folder / f"{k}.dcm"
            write_mr_slice(path, stored, SliceGeometry((0, 0, 3.0 * k), (1, 0, 0), (0, 1, 0), (0.5, 0.5), 3.0),
                           instance_number=k + 1, series_description="Axial T2", study_id=1, series_id=2,
                           rescale=(2.0, 10.0))
            ds = pydicom.dcmread(path)
            ds.PhotometricInterpretation = photometric
            ds.save_as(path)
        series[photometric] = read_series(folder).pixels
    np.testing.assert_allclose(series["MONOCHROME1"][0], -(2.0 * img + 10.0))
    params = NormalizeParams()
    one, two = (normalize(p, params, value_range=intensity_range(p, params)) for p in series.values())
    np.testing.assert_allclose(one, two, atol=1e-6)


def test_minority_size_slice_is_resampled_with_geometry_kept(tmp_path, caplog):
    folder = _series_dir(tmp_path)
    geo = dict(row_dir=(1, 0, 0), col_dir=(0, 1, 0), thickness=3.0)
    for k in range(3):
        write_mr_slice(folder / f"{k}.dcm", np.full((8, 8), 100), SliceGeometry((0, 0, 3 * k), spacing=(1, 1), **geo),
                       instance_number=k + 1, series_description="Axial T2", study_id=1, series_id=2)
    write_mr_slice(folder / "odd.dcm", np.full((4, 4), 100), SliceGeometry((0.5, 0.5, 9), spacing=(2, 2), **geo),
                   instance_number=4, series_description="Axial T2", study_id=1, series_id=2)
    with caplog.at_level(logging.WARNING):
        s = read_series(folder)
    assert "odd.dcm" in caplog.text and "resampled" in caplog.text
    assert s.shape == (4, 8, 8) and s.instance_numbers.tolist() == [4, 3, 2, 1]  # axial: head (z = 9) first
    np.testing.assert_allclose(s.pixels[0], 100)
    # volume grid: 4x4 at 2 mm from (0.5, 0.5): field of view corner (-0.5, -0.5); 8x8 at 1 mm -> first centre (0, 0)
    np.testing.assert_allclose(s.spacings[0], [1, 1])
    np.testing.assert_allclose(s.positions[0], [0, 0, 9])
    # labels keep the stored 4x4 grid: stored pixel (1, 2) lies at (0.5 + 2, 0.5 + 4, 9) = canonical (2.5, 4.5)
    assert s.stored_shape(4) == (4, 4)
    np.testing.assert_allclose(s.to_patient(4, 1, 2), [2.5, 4.5, 9])
    assert s.stored_to_canonical(4, 1, 2) == (0, 2.5, 4.5)
    assert s.canonical_to_stored(0, 2.5, 4.5) == (4, 1, 2)
    np.testing.assert_allclose(s.pixel_to_patient(0, 2.5, 4.5), [2.5, 4.5, 9])
    assert s.from_patient([2.5, 4.5, 9.25]) == pytest.approx((4, 1, 2, 0.25))


# ---------------------------------------------------------------------------------------- bad input
def test_corrupt_file_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    folder = _series_dir(tmp_path)
    _write_stack(folder, [(0, 0, 0), (0, 0, 3)], (1, 0, 0), (0, 1, 0), [1, 2])
    (folder / "broken.dcm").write_bytes(b"not a dicom file at all")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "truncated.dcm")
    with caplog.at_level(logging.WARNING):
        s = read_series(folder)
    assert s.instance_numbers.tolist() == [2, 1]  # axial: head (z = 3) first
    assert "broken.dcm" in caplog.text and "truncated.dcm" in caplog.text


def test_series_without_readable_slice_names_the_series(tmp_path):
    folder = _series_dir(tmp_path, 11, 22)
    (folder / "1.dcm").write_bytes(b"garbage")
    with pytest.raises(DicomError, match="11/22.*no readable"):
        read_series(folder)


def test_missing_geometry_tag_names_the_series_and_tag(tmp_path):
    folder = _series_dir(tmp_path, 11, 22)
    path = write_mr_slice(folder / "1.dcm", np.zeros((4, 4)), SliceGeometry((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 1),
                          instance_number=1, series_description="Axial T2", study_id=11, series_id=22)
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"11/22.*ImagePositionPatient \(0020,0032\)"):
        read_series(folder)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DicomError, match="does not exist"):
        read_series(tmp_path / "nope" / "3")
