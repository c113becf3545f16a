"""data_loader.image_io: every odd image kind is read right, every broken one raises a clear error."""
import numpy as np
import pytest
import cv2
from PIL import Image

from data_loader import ImageReadError, read_alpha, read_header, read_rgb


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return cv2.resize(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), (30, 20), interpolation=cv2.INTER_LINEAR)


def test_rgb_jpeg_and_png(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=98, subsampling=0)
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    assert np.abs(read_rgb(tmp_path / "a.jpg").astype(int) - rgb).mean() < 3


def test_grayscale_rgba_palette(tmp_path, rgb):
    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.dstack([gray] * 3))
    Image.fromarray(np.dstack([rgb, gray]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgb)  # alpha dropped
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_sixteen_bit(tmp_path, rgb):
    wide = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "g16.png"), wide[..., 0])
    cv2.imwrite(str(tmp_path / "rgb16.png"), wide[..., ::-1])
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16.png")[..., 0], rgb[..., 0])
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb16.png"), rgb)
    np.testing.assert_allclose(read_alpha(tmp_path / "g16.png"), rgb[..., 0] / 255.0, atol=1e-6)


def test_sixteen_bit_values_that_are_not_multiples_of_257(tmp_path):
    wide = np.random.default_rng(2).integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgba16.png"), wide[..., [2, 1, 0, 3]])  # BGRA on disk: RGBA 16-bit
    cv2.imwrite(str(tmp_path / "g16.png"), wide[..., 0])
    expected = np.round(wide / 257.0)
    out = read_rgb(tmp_path / "rgba16.png")  # the colour, scaled to 8 bits (alpha dropped)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.abs(out - expected[..., :3]).max() <= 1
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16.png"), np.dstack([expected[..., 0]] * 3))
    np.testing.assert_allclose(read_alpha(tmp_path / "g16.png"), wide[..., 0] / 65535.0, atol=1e-6)
    assert np.abs(read_alpha(tmp_path / "rgba16.png", channel=3) - wide[..., 3] / 65535.0).max() <= 1 / 255


def test_gray_alpha_and_transparent_palette_photos(tmp_path, rgb):
    gray, alpha = rgb[..., 0], rgb[..., 1]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png"), np.dstack([gray] * 3))  # alpha dropped
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pt.png", transparency=0)
    assert read_header(tmp_path / "pt.png").has_alpha
    np.testing.assert_array_equal(read_rgb(tmp_path / "pt.png"), np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=98, subsampling=0)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_rgb(tmp_path / "c.jpg")
    assert out.shape == (20, 30, 3) and np.abs(out.astype(int) - rgb).mean() < 6


def test_exif_rotation(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(rgb).save(tmp_path / "r.jpg", quality=98, subsampling=0, exif=exif)
    header = read_header(tmp_path / "r.jpg")
    assert header.size == (20, 30) and header.raw_size == (30, 20)
    out = read_rgb(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3)
    assert np.abs(out.astype(int) - np.rot90(rgb, -1)).mean() < 3
    assert read_rgb(tmp_path / "r.jpg", exif=False).shape == (20, 30, 3)


def test_alpha_channels(tmp_path, rgb):
    alpha = rgb[..., 1]
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "m.png")
    out = read_alpha(tmp_path / "m.png", channel=3)
    assert out.dtype == np.float32 and out.shape == (20, 30)
    np.testing.assert_allclose(out, alpha / 255.0, atol=1e-6)
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_alpha(tmp_path / "la.png", channel=3), alpha / 255.0, atol=1e-6)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="rgb.png.*channel 3"):
        read_alpha(tmp_path / "rgb.png", channel=3)


def test_broken_files_raise_naming_the_file(tmp_path, rgb):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    for name, reason in [("zero.jpg", "0 bytes"), ("text.png", "cannot identify"), ("cut.jpg", "truncated"),
                         ("cut.png", ""), ("missing.png", "No such file")]:
        with pytest.raises(ImageReadError, match=name) as info:
            read_rgb(tmp_path / name)
        assert reason.lower() in str(info.value).lower()
        assert isinstance(info.value, ValueError) and str(info.value).count("cannot read image") == 1
    with pytest.raises(ImageReadError, match="zero.jpg"):
        read_header(tmp_path / "zero.jpg")
    read_header(tmp_path / "cut.jpg")  # the header is intact: caught at draw time instead


def test_large_jpeg_is_decoded_at_a_reduced_scale_never_below_the_request(tmp_path, rgb):
    big = cv2.resize(rgb, (400, 320), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    out = read_rgb(tmp_path / "big.jpg", min_short_side=70)
    assert out.shape == (80, 100, 3)  # 1/4 scale: 80 >= 70 (1/8 would give 40)
    assert read_rgb(tmp_path / "big.jpg", min_short_side=200).shape == (320, 400, 3)
