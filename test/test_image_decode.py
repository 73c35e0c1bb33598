"""Raw sensor_msgs/Image fields -> RGB, checked against OpenCV's own conversions."""
import cv2
import numpy as np
import pytest

from videomolmo_ros.core.image_decode import ImageDecodeError, decode_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def padded(rows: np.ndarray, pad: int) -> bytes:
    """Rows of bytes with ``pad`` junk bytes at the end of each (as a driver's step does)."""
    flat = rows.reshape(rows.shape[0], -1).view(np.uint8)
    junk = np.full((flat.shape[0], pad), 77, np.uint8)
    return np.concatenate([flat, junk], axis=1).tobytes()


@pytest.mark.parametrize("encoding,source", [
    ("rgb8", RGB),
    ("bgr8", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)),
    ("rgba8", cv2.cvtColor(RGB, cv2.COLOR_RGB2RGBA)),
    ("bgra8", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGRA)),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_with_row_padding(encoding, source, pad):
    step = source.shape[1] * source.shape[2] + pad
    out = decode_image(encoding, 5, 7, step, False, padded(source, pad))
    np.testing.assert_array_equal(out, RGB)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0].copy()
    out = decode_image("mono8", 5, 7, 7, False, grey.tobytes())
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out[:, :, 1], grey)


@pytest.mark.parametrize("bigendian", [False, True])
def test_16_bit_honours_endianness_and_scales_by_peak(bigendian):
    depth = np.array([[0, 1000], [2000, 4000]], np.uint16)
    data = depth.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_image("16UC1", 2, 2, 4, bigendian, data)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 63], [127, 255]])


@pytest.mark.parametrize("kwargs,reason", [
    (dict(encoding="yuv422"), "unsupported encoding"),
    (dict(height=0), "empty image"),
    (dict(width=0), "empty image"),
    (dict(step=20), "smaller than a row"),
    (dict(data=b"\x00" * 10), "expected"),
    (dict(max_pixels=34), "exceeds the limit"),
])
def test_bad_fields_give_a_reason(kwargs, reason):
    fields = dict(encoding="rgb8", height=5, width=7, step=21, is_bigendian=False,
                  data=RGB.tobytes())
    fields.update(kwargs)
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(**fields)
