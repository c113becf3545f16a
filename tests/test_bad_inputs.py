"""Hostile and broken image files (bombs, truncated files): refused by name, cheaply.

Every file is made here, a few hundred bytes at most: decompression bombs (a header declaring
far more pixels than the data holds), truncated PNGs and JPEGs that Pillow decodes without an
error, and the good files next to them that must still read.
"""
import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from data_loader.image_io import MAX_PIXELS, ImageReadError, read_alpha, read_header, read_rgb

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets filters
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width, height, rows=None, colour_type=0, interlaced=False, raw=None):
    """A gray (colour_type 0) or RGB (2) 8-bit PNG whose zlib stream holds ``rows`` rows of
    value 200 (all rows if None) and then ends properly; ``raw``: the filtered bytes as given."""
    channels = {0: 1, 2: 3}[colour_type]
    if raw is None:
        rows = height if rows is None else rows
        raw = (b"\x00" + bytes([200]) * (width * channels)) * rows
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def jpeg_bytes(array, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def cut_with_end_marker(data, fraction=1 / 3):
    """The first ``fraction`` of a JPEG with an end-of-image marker appended: a cut-off download
    that a check for the end marker alone would pass."""
    return data[:int(len(data) * fraction)] + b"\xff\xd9"


@pytest.fixture
def noise():
    return np.random.default_rng(0).integers(0, 256, (400, 300, 3), dtype=np.uint8)


# ---- decompression bombs -----------------------------------------------------------------------
def test_a_png_bomb_is_refused_from_its_header_naming_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(make_png(12000, 12000, rows=1))
    assert path.stat().st_size < 200
    for read in (read_rgb, read_alpha):
        with pytest.raises(ImageReadError, match="bomb.png") as info:
            read(path)
        message = str(info.value)
        assert "12000x12000 is 144,000,000 pixels (144.0 MP)" in message
        assert f"limit of {MAX_PIXELS:,} ({MAX_PIXELS / 1e6:g} MP" in message
        assert "--max-pixels" in message and "before decoding" in message
    assert read_header(path).size == (12000, 12000)  # the header alone is still readable


def test_a_jpeg_bomb_is_refused_before_decoding(tmp_path):
    data = bytearray(jpeg_bytes(np.full((16, 16, 3), 90, np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 12000, 12000)  # height, width
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"bomb.jpg.*12000x12000.*pixel limit"):
        read_rgb(path)
    # decoded at 1/8 scale it is within the limit, and then the missing data is found
    with pytest.raises(ImageReadError, match=r"bomb.jpg.*truncated"):
        read_rgb(path, min_short_side=320)


def test_the_bomb_costs_no_memory(tmp_path):
    """Peak resident memory of a fresh process reading the bomb: under 100 MB (decoding it
    took 1.4 GB before the limit). VmHWM, the peak of this process's own memory (ru_maxrss
    would carry over the parent's peak across exec). Pillow's own warning is not printed
    beside the project's error."""
    path = tmp_path / "bomb.png"
    path.write_bytes(make_png(12000, 12000, rows=1))
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status")
    script = ("import sys\n"
              "from data_loader.image_io import ImageReadError, read_alpha, read_rgb\n"
              "for read in (read_rgb, read_alpha):\n"
              "    try:\n"
              "        read(sys.argv[1])\n"
              "    except ImageReadError as err:\n"
              "        print(err)\n"
              "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
              "print(int(peak[0].split()[1]) // 1024)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all("pixel limit" in line for line in lines[:2])
    assert int(lines[2]) < 100, f"peak {lines[2]} MB"


def test_max_pixels_is_a_parameter(tmp_path, noise):
    path = tmp_path / "a.png"
    Image.fromarray(noise[:30, :40]).save(path)  # 1200 pixels
    with pytest.raises(ImageReadError, match=r"a.png: 40x30 is 1,200 pixels \(0.0 MP\), "
                                             r"over the pixel limit of 1,000 \(0.001 MP"):
        read_rgb(path, max_pixels=1000)
    with pytest.raises(ImageReadError, match="pixel limit"):
        read_alpha(path, max_pixels=1199)
    assert read_rgb(path, max_pixels=1200).shape == (30, 40, 3)
    assert read_alpha(path, max_pixels=None).shape == (30, 40)
    for bad in (0, -5, 1.5, True, "100"):
        with pytest.raises(ValueError, match="max_pixels must be an integer"):
            read_rgb(path, max_pixels=bad)


def test_the_limit_counts_the_pixels_a_draft_decodes(tmp_path, noise):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(np.repeat(np.repeat(noise[:40, :50], 8, 0), 8, 1)))  # 400x320
    with pytest.raises(ImageReadError, match="400x320"):
        read_rgb(path, max_pixels=10000)
    assert read_rgb(path, max_pixels=10000, min_short_side=40).shape == (40, 50, 3)  # 1/8 scale


def test_pillows_own_bomb_error_is_an_image_read_error(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(make_png(20000, 10000, rows=1))  # 200 MP: over Pillow's 179 MP
    with pytest.raises(ImageReadError, match=r"huge.png.*Pillow's decompression-bomb limit"):
        read_rgb(path, max_pixels=None)
    with pytest.raises(ImageReadError, match="huge.png"):
        read_header(path)


# ---- truncated files that decode without an error -------------------------------------------------
def test_a_png_whose_data_holds_100_of_its_400_rows(tmp_path):
    path = tmp_path / "short.png"
    path.write_bytes(make_png(300, 400, rows=100))
    with Image.open(path) as im:  # what Pillow does by itself: no error, rows 100-399 zero
        im.load()
        assert np.asarray(im)[100:].max() == 0
    for read in (read_rgb, read_alpha):
        with pytest.raises(ImageReadError, match=r"short.png: truncated: its image data holds 100 of its 400 rows"):
            read(path)
    rgb = tmp_path / "short_rgb.png"
    rgb.write_bytes(make_png(30, 40, rows=39, colour_type=2))
    with pytest.raises(ImageReadError, match="39 of its 40 rows"):
        read_rgb(rgb)


def test_an_interlaced_png_cut_short(tmp_path):
    # 10x20 gray: the seven Adam7 passes' (width, height), each row with its filter byte: 238 bytes
    needed = sum(h * (1 + w) for w, h in [(2, 3), (1, 3), (3, 2), (2, 5), (5, 5), (5, 10), (10, 10)])
    good, cut = tmp_path / "good.png", tmp_path / "cut.png"
    good.write_bytes(make_png(10, 20, interlaced=True, raw=b"\x00" * needed))
    assert not read_alpha(good).any()  # all zeros, complete
    for missing in (11, 146):  # whole rows missing: Pillow decodes these without an error
        cut.write_bytes(make_png(10, 20, interlaced=True, raw=b"\x00" * (needed - missing)))
        with Image.open(cut) as im:
            im.load()
        with pytest.raises(ImageReadError, match=f"cut.png: truncated: its interlaced image data holds "
                                                 f"{needed - missing} of the {needed} bytes"):
            read_alpha(cut)


def test_pngs_with_zero_bottom_rows_still_read(tmp_path, noise):
    mask = np.zeros((40, 30), np.uint8)
    mask[5:20, 5:25] = 255  # a matte whose last rows are background
    Image.fromarray(mask).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_alpha(tmp_path / "mask.png"), mask / 255.0)
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "black.png")
    assert read_rgb(tmp_path / "black.png").max() == 0


def test_a_baseline_jpeg_cut_to_a_third_with_an_end_marker(tmp_path, noise):
    for name, array in (("rgb.jpg", noise), ("gray.jpg", noise[..., 0])):
        data = jpeg_bytes(array)
        (tmp_path / name).write_bytes(data)
        assert read_rgb(tmp_path / name).shape == (400, 300, 3)
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(cut_with_end_marker(data))
        with pytest.raises(ImageReadError, match=rf"cut_{name}: truncated: its last \d+ of 400 rows are the "
                                                 "decoder's fill"):
            read_rgb(cut)
        with pytest.raises(ImageReadError, match="truncated"):
            read_alpha(cut)


def test_a_progressive_jpeg_cut_short(tmp_path, noise):
    data = jpeg_bytes(noise, progressive=True)
    (tmp_path / "p.jpg").write_bytes(data)
    assert read_rgb(tmp_path / "p.jpg").shape == (400, 300, 3)
    for fraction in (0.1, 1 / 3, 0.5):
        (tmp_path / "cut.jpg").write_bytes(cut_with_end_marker(data, fraction))
        with pytest.raises(ImageReadError, match="cut.jpg: truncated: a progressive JPEG whose refinement scans"):
            read_rgb(tmp_path / "cut.jpg")


def test_grey_jpegs_the_rule_accepts_and_refuses(tmp_path, noise):
    # wholly mid grey: indistinguishable from a file cut after its header, accepted as a solid colour
    (tmp_path / "grey.jpg").write_bytes(jpeg_bytes(np.full((64, 48, 3), 128, np.uint8)))
    assert (read_rgb(tmp_path / "grey.jpg") == 128).all()
    # a grey bottom of less than one 8-pixel block row is accepted; more is refused (the rule's cost)
    photo = noise[:64, :48].copy()
    photo[-7:] = 128
    (tmp_path / "thin.jpg").write_bytes(jpeg_bytes(photo, quality=95, subsampling=0))
    assert read_rgb(tmp_path / "thin.jpg").shape == (64, 48, 3)
    photo[-24:] = 128
    (tmp_path / "band.jpg").write_bytes(jpeg_bytes(photo, quality=95, subsampling=0))
    with pytest.raises(ImageReadError, match="band.jpg.*saved as PNG instead"):
        read_rgb(tmp_path / "band.jpg")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, on the cut TIFF
@pytest.mark.parametrize("kind, options", [("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"}),
                                           ("WEBP", {"quality": 90}), ("WEBP", {"lossless": True})])
def test_other_formats_cut_in_half_are_refused(tmp_path, noise, kind, options):
    buffer = io.BytesIO()
    Image.fromarray(noise[:40, :30]).save(buffer, kind, **options)
    path = tmp_path / f"cut.{kind.lower()}"
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match=path.name):
        read_rgb(path)
