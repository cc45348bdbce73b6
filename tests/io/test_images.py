"""Single images through OpenImageIO: round trips within each format's precision, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.images import image_shape, read_image, write_image, write_images

# Largest slope of the sRGB decode curve (at 1.0): 2.4 / 1.055 * 1 ** 1.4 ~ 2.275. An encoded-space
# quantisation error e becomes at most 2.28 * e in linear space.
SRGB_DECODE_MAX_SLOPE = 2.28


def ramp(h: int = 32, w: int = 48, c: int = 3) -> np.ndarray:
    """Deterministic values covering [0, 1] densely, different per channel."""
    rng = np.random.default_rng(7)
    return rng.uniform(0.0, 1.0, size=(h, w, c)).astype(np.float32)


def test_exr_float_round_trip_is_exact(tmp_path):
    image = ramp() * 40.0 - 3.0  # float EXR holds any finite value, not only [0, 1]
    back = read_image(write_image(tmp_path / "f.exr", image, pixel_type="float"))
    assert np.array_equal(back, image)


def test_exr_half_round_trip_within_half_precision(tmp_path):
    image = ramp() * 4.0 - 2.0
    back = read_image(write_image(tmp_path / "h.exr", image, pixel_type="half"))
    # half keeps 11 significant bits: round-to-nearest is within 2**-11 relative (values here are normal).
    assert np.all(np.abs(back - image) <= np.abs(image) * 2.0**-11 + 1e-7)


@pytest.mark.parametrize("suffix, pixel_type, levels", [(".png", "uint8", 255), (".png", "uint16", 65535),
                                                        (".tif", "uint8", 255), (".tif", "uint16", 65535)])
def test_integer_round_trip_within_half_a_level(tmp_path, suffix, pixel_type, levels):
    image = ramp()
    back = read_image(write_image(tmp_path / f"i{suffix}", image, pixel_type=pixel_type))
    assert np.abs(back - image).max() <= 0.5 / levels + 1e-7  # rounding to the nearest stored level


@pytest.mark.parametrize("pixel_type, levels", [("uint8", 255), ("uint16", 65535)])
def test_srgb_png_round_trip_within_half_a_level_through_the_curve(tmp_path, pixel_type, levels):
    image = ramp()
    path = write_image(tmp_path / "albedo.png", image, pixel_type=pixel_type, srgb=True)
    back = read_image(path, srgb=True)
    assert np.abs(back - image).max() <= 0.5 / levels * SRGB_DECODE_MAX_SLOPE + 1e-6
    raw = read_image(path)  # the file itself holds the encoded curve: mid grey is stored brighter
    assert raw.mean() > image.mean() + 0.05


def test_jpeg_is_read(tmp_path):
    flat = np.full((16, 16, 3), [0.2, 0.5, 0.8], np.float32)
    back = read_image(write_image(tmp_path / "flat.jpg", flat, pixel_type="uint8"))
    assert np.abs(back - flat).max() <= 2.0 / 255  # lossy codec, but a flat 8x8 block keeps its DC value


def test_image_shape_reads_the_header(tmp_path):
    assert image_shape(write_image(tmp_path / "s.exr", ramp(8, 24, 1))) == (8, 24, 1)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"gone\.exr: image file not found"):
        read_image(tmp_path / "gone.exr")


@pytest.mark.parametrize("suffix, pixel_type", [(".exr", "half"), (".png", "uint8"), (".tif", "uint16")])
def test_truncated_image_is_refused(tmp_path, suffix, pixel_type):
    path = write_image(tmp_path / f"cut{suffix}", ramp(64, 64), pixel_type=pixel_type)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpDiffInputError, match=rf"cut\{suffix}: (corrupt or truncated image|cannot open image)"):
        read_image(path)


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("not an image")
    with pytest.raises(ExpDiffInputError, match=r"text\.png: cannot open image"):
        read_image(path)


def test_wrong_channel_count_is_refused(tmp_path):
    path = write_image(tmp_path / "rgba.exr", ramp(c=4))
    with pytest.raises(ExpDiffInputError, match=r"rgba\.exr: has 4 channel\(s\), expected 3"):
        read_image(path, channels=3)


def test_nan_pixels_are_not_written(tmp_path):
    image = ramp()
    image[3, 4, 1] = np.nan
    with pytest.raises(ExpDiffInputError, match=r"nan\.exr: refusing to write NaN"):
        write_image(tmp_path / "nan.exr", image)
    assert not any(tmp_path.iterdir())


def test_write_images_is_all_or_nothing(tmp_path):
    # The second file fails inside OpenImageIO (PNG holds at most 4 channels) after the first temp file
    # was fully written: neither file, nor any temp, may remain.
    with pytest.raises(ExpDiffInputError, match=r"b\.png: cannot write image: .*5-channel"):
        write_images([(tmp_path / "a.png", ramp()), (tmp_path / "b.png", ramp(c=5))], pixel_type="uint8")
    assert not any(tmp_path.iterdir())


def test_writing_the_same_pixels_twice_gives_identical_bytes(tmp_path):
    import time

    import numpy as np

    from expdiff_core.io.images import write_image

    image = np.linspace(0, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    write_image(tmp_path / "a.exr", image)
    time.sleep(1.1)  # EXR headers hold a DateTime with one-second resolution
    write_image(tmp_path / "b.exr", image)
    assert (tmp_path / "a.exr").read_bytes() == (tmp_path / "b.exr").read_bytes()
