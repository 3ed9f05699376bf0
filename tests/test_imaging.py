"""decode_image: transports (raw / base64 / data URL), formats, modes, EXIF orientation, errors, pixel limit,
memory."""

from __future__ import annotations

import base64
import io
import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from common import imaging
from common.errors import InvalidImage
from common.imaging import (
    ACCEPTED_FORMATS,
    decode_image,
    decode_image_for,
    encode_png,
    max_image_pixels,
)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _check(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)
    assert arr.flags.c_contiguous and arr.flags.writeable


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # as in production: common.imaging silences it (it refuses those images itself)
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        yield


# ---------------------------------------------------------------- transports


def test_raw_png_bytes_round_trip():
    out = decode_image(encode_png(RGB))
    _check(out, 5, 7)
    np.testing.assert_array_equal(out, RGB)


def test_bytearray_and_memoryview():
    data = encode_png(RGB)
    np.testing.assert_array_equal(decode_image(bytearray(data)), RGB)
    np.testing.assert_array_equal(decode_image(memoryview(data)), RGB)


def _png_with_b64_specials() -> bytes:
    """A PNG whose standard base64 contains '+' or '/' and needs padding."""
    for seed in range(200):
        arr = np.random.default_rng(seed).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        data = encode_png(arr)
        std = base64.b64encode(data)
        if (b"+" in std or b"/" in std) and std.endswith(b"="):
            return data
    raise AssertionError("no suitable PNG found")


def _b64_variants(data: bytes) -> dict[str, object]:
    std = base64.b64encode(data).decode()
    url = base64.urlsafe_b64encode(data).decode()
    assert std != url  # the data exercises the two alphabets
    return {
        "std str": std,
        "std bytes": std.encode(),
        "no padding": std.rstrip("="),
        "urlsafe": url,
        "urlsafe no padding": url.rstrip("="),
        "mime lines": base64.encodebytes(data).decode(),  # newline every 76 chars
        "spaces and tabs": " \t" + " ".join(std[i:i + 10] for i in range(0, len(std), 10)) + "\r\n",
        "data url": "data:image/png;base64," + std,
        "data url bytes": ("data:image/png;base64," + url.rstrip("=")).encode(),
        "data url no media type": "data:;base64," + std,
    }


@pytest.mark.parametrize("variant", list(_b64_variants(_png_with_b64_specials())))
def test_base64_variants(variant):
    data = _png_with_b64_specials()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = decode_image(_b64_variants(data)[variant])
    _check(out, 4, 5)
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------- modes


def test_mode_rgb_jpeg():
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :8] = (200, 30, 40)
    arr[:, 8:] = (20, 160, 220)
    out = decode_image(_save(Image.fromarray(arr), "JPEG", quality=95))
    _check(out, 16, 16)
    assert np.abs(out[8, 2].astype(int) - (200, 30, 40)).max() < 12
    assert np.abs(out[8, 13].astype(int) - (20, 160, 220)).max() < 12


def test_mode_L():
    grey = np.array([[0, 17, 255], [128, 64, 3]], np.uint8)
    out = decode_image(_save(Image.fromarray(grey, "L")))
    _check(out, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_mode_LA_drops_alpha():
    la = Image.fromarray(np.dstack([np.array([[10, 200]], np.uint8), np.array([[0, 255]], np.uint8)]), "LA")
    assert la.mode == "LA"
    out = decode_image(_save(la))
    _check(out, 1, 2)
    np.testing.assert_array_equal(out[0], [[10, 10, 10], [200, 200, 200]])  # alpha 0 keeps its grey


def _palette_image() -> Image.Image:
    p = Image.new("P", (3, 1))
    p.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    for x, idx in enumerate([0, 1, 2]):
        p.putpixel((x, 0), idx)
    return p


def test_mode_P():
    out = decode_image(_save(_palette_image()))
    _check(out, 1, 3)
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]])


@pytest.mark.parametrize("transparency", [0, b"\x00\x80\xff"], ids=["index", "bytes"])
def test_mode_P_with_transparency(transparency):
    data = _save(_palette_image(), transparency=transparency)
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and "transparency" in img.info
    out = decode_image(data)
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]])


def test_mode_P_gif_with_transparency():
    out = decode_image(_save(_palette_image(), "GIF", transparency=1))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]])


def test_mode_RGBA_drops_alpha_without_compositing():
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], np.uint8)
    out = decode_image(_save(Image.fromarray(rgba, "RGBA")))
    _check(out, 1, 3)
    np.testing.assert_array_equal(out[0], rgba[0, :, :3])


def test_mode_CMYK():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 0))  # white
    cmyk.putpixel((2, 0), (0, 255, 255, 0))  # red
    out = decode_image(_save(cmyk, "TIFF"))
    _check(out, 1, 3)
    np.testing.assert_array_equal(out[0], [[0, 255, 255], [255, 255, 255], [255, 0, 0]])
    jpeg = decode_image(_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert np.abs(jpeg[4, 4].astype(int) - (255, 0, 0)).max() < 8


def test_mode_1():
    bits = Image.new("1", (3, 2))
    bits.putpixel((1, 0), 1)
    bits.putpixel((2, 1), 1)
    out = decode_image(_save(bits))
    _check(out, 2, 3)
    np.testing.assert_array_equal(out[:, :, 1], [[0, 255, 0], [0, 0, 255]])


def test_mode_I16_takes_high_byte():
    a16 = np.array([[0x1234, 65535, 255], [256, 0, 0x8000]], np.uint16)
    data = _save(Image.fromarray(a16))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    _check(out, 2, 3)
    np.testing.assert_array_equal(out[:, :, 0], [[0x12, 255, 0], [1, 0, 0x80]])
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_mode_I16B():
    a16 = np.array([[0x1234, 65535, 0x0100]], np.uint16).astype(">u2")
    data = _save(Image.fromarray(a16), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    np.testing.assert_array_equal(decode_image(data)[0, :, 1], [0x12, 255, 1])


def test_mode_I_within_8_bit_range_is_clipped():
    ai = np.array([[-5, 0, 100, 255]], np.int32)
    data = _save(Image.fromarray(ai), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    np.testing.assert_array_equal(decode_image(data)[0, :, 0], [0, 0, 100, 255])


def test_mode_I_wide_range_scaled_by_max():
    ai = np.array([[-7, 200, 400, 1000]], np.int32)
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(ai), "TIFF"))[0, :, 0], [0, 51, 102, 255])


def test_mode_F():
    af = np.array([[0.4, 1.6, 254.7, -3.0]], np.float32)
    data = _save(Image.fromarray(af), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    np.testing.assert_array_equal(decode_image(data)[0, :, 2], [0, 2, 255, 0])
    wide = np.array([[0.0, 204.0, 1020.0, np.nan]], np.float32)
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(wide), "TIFF"))[0, :, 0], [0, 51, 255, 0])


# ---------------------------------------------------------------- EXIF orientation

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _quadrants() -> np.ndarray:
    """32 wide x 16 high: top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((16, 32, 3), np.uint8)
    a[:8, :16], a[:8, 16:], a[8:, :16], a[8:, 16:] = RED, GREEN, BLUE, WHITE
    return a


def _with_orientation(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    return _save(Image.fromarray(_quadrants()), fmt, exif=exif, **kw)


# displayed corners (top-left, top-right, bottom-left, bottom-right), displayed shape, numpy rotation
ORIENTATIONS = {
    6: ((BLUE, RED, WHITE, GREEN), (32, 16), -1),  # rotate 90 clockwise
    3: ((WHITE, BLUE, GREEN, RED), (16, 32), 2),  # rotate 180
    8: ((GREEN, WHITE, RED, BLUE), (32, 16), 1),  # rotate 90 counter-clockwise
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(fmt, orientation):
    corners, (h, w), k = ORIENTATIONS[orientation]
    data = _with_orientation(fmt, orientation)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == orientation
    out = decode_image(data)
    _check(out, h, w)
    tol = 0 if fmt == "PNG" else 10
    probes = [(2, 2), (2, w - 3), (h - 3, 2), (h - 3, w - 3)]
    for (y, x), colour in zip(probes, corners):
        assert np.abs(out[y, x].astype(int) - colour).max() <= tol, (y, x, out[y, x], colour)
    if fmt == "PNG":
        np.testing.assert_array_equal(out, np.rot90(_quadrants(), k=k))


def test_orientation_1_unchanged():
    np.testing.assert_array_equal(decode_image(_with_orientation("PNG", 1)), _quadrants())


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]], tail: bytes = b"") -> bytes:
    """A little-endian TIFF header + one IFD of (tag, type, count, 4-byte value) entries."""
    body = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value
    return body + struct.pack("<I", 0) + tail


# Orientation 6 stored as text and as a fraction: OpenCV ignores both, so must we.
ODD_ORIENTATIONS = {
    "ascii '6'": _tiff_ifd([(0x0112, 2, 2, b"6\x00\x00\x00")]),
    "rational 6/1": _tiff_ifd([(0x0112, 5, 1, struct.pack("<I", 26))], struct.pack("<II", 6, 1)),
}


def _jpeg_with_app1(pixels: np.ndarray, tiff: bytes) -> bytes:
    data = _save(Image.fromarray(pixels), "JPEG", quality=95, subsampling=0)
    app1 = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _stripes() -> np.ndarray:
    """64 wide x 16 high: left half red, right half blue, a white block top-right."""
    a = np.zeros((16, 64, 3), np.uint8)
    a[:, :32], a[:, 32:], a[:8, 48:] = RED, BLUE, WHITE
    return a


@pytest.mark.parametrize("needed", [None, lambda w, h: (w // 2, h // 2)], ids=["full", "reduced"])
@pytest.mark.parametrize("kind", sorted(ODD_ORIENTATIONS))
def test_jpeg_orientation_that_is_not_an_integer_is_ignored(kind, needed):
    data = _jpeg_with_app1(_stripes(), ODD_ORIENTATIONS[kind])
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) in ("6", 6)  # what Pillow reads: a str or an IFDRational
    pixels, full = decode_image_for(data, needed)
    assert full == (64, 16)
    scale = 1 if needed is None else 2
    assert pixels.shape == (16 // scale, 64 // scale, 3)
    probes = {(12 // scale, 8 // scale): RED, (12 // scale, 40 // scale): BLUE, (2 // scale, 60 // scale): WHITE}
    for (y, x), colour in probes.items():
        assert np.abs(pixels[y, x].astype(int) - colour).max() <= 12, (y, x, pixels[y, x], colour)


@pytest.mark.parametrize("kind", sorted(ODD_ORIENTATIONS))
def test_png_orientation_that_is_not_an_integer_is_ignored(kind):
    data = _save(Image.fromarray(_stripes()), exif=ODD_ORIENTATIONS[kind])
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) in ("6", 6)
    pixels, full = decode_image_for(data)
    assert full == (64, 16)
    np.testing.assert_array_equal(pixels, _stripes())


@pytest.mark.parametrize("needed", [None, lambda w, h: (w // 2, h // 2)], ids=["full", "reduced"])
def test_jpeg_full_size_follows_the_pixels_when_orientations_disagree(needed, monkeypatch):
    """Whatever the EXIF parsers think, the size returned is the decoded array's orientation."""
    monkeypatch.setattr(imaging, "_orientation", lambda img: 6)  # Pillow says "rotate", OpenCV does not
    pixels, full = decode_image_for(_save(Image.fromarray(_stripes()), "JPEG", quality=95), needed)
    assert full == (64, 16)
    assert pixels.shape[:2] == ((16, 64) if needed is None else (8, 32))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("data", [b"", "", "   \n", b"\r\n"], ids=["bytes", "str", "spaces", "newline"])
def test_empty_is_invalid(data):
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(data)


def test_missing_is_invalid():
    with pytest.raises(InvalidImage, match="no image data"):
        decode_image(None)
    with pytest.raises(InvalidImage, match="not int"):
        decode_image(12)


def test_garbage_bytes():
    with pytest.raises(InvalidImage, match="not an image in a known format") as info:
        decode_image(b"\x00\x01\x02 definitely not an image \xff")
    assert "Traceback" not in str(info.value)


def test_garbage_base64_text():
    with pytest.raises(InvalidImage, match="not valid base64"):
        decode_image("this is *not* base64!")
    with pytest.raises(InvalidImage, match="not valid base64"):
        decode_image("abcde")  # impossible length
    with pytest.raises(InvalidImage, match="not an image"):
        decode_image(base64.b64encode(b"hello world, no image here").decode())
    with pytest.raises(InvalidImage, match="only base64 data URLs"):
        decode_image("data:image/png,%89PNG")
    with pytest.raises(InvalidImage, match="neither base64"):
        decode_image("bild\u00e4")


def _messages_of_bad_inputs() -> dict[str, object]:
    tiff = _save(Image.fromarray(RGB), "TIFF")
    return {
        "long type name": type("X" * 5000, (), {})(),
        "non-ascii text": "\u00e4" * 100_000,
        "non-base64 text": "!" * 100_000,
        "bad base64": "A" * 99_999 + "!",
        "garbage bytes": b"\x00\xff" * 100_000,
        "long data URL header": "data:" + "x" * 100_000 + ",AAAA",
        "broken TIFF": tiff[:8] + b"\xff" * 200 + tiff[208:],
        "ICO": _ico_with_png(16, 32),
        "huge PNG": _png_claiming(2**31 - 1, 2**31 - 1),
        "truncated JPEG": _save(Image.fromarray(RGB), "JPEG")[:200],
    }


@pytest.mark.parametrize("name", ["long type name", "non-ascii text", "non-base64 text", "bad base64", "garbage bytes",
                                  "long data URL header", "broken TIFF", "ICO", "huge PNG", "truncated JPEG"])
def test_every_failure_is_a_short_invalid_image(name):
    with pytest.raises(InvalidImage) as info:
        decode_image(_messages_of_bad_inputs()[name])
    assert 0 < len(str(info.value)) < 200, str(info.value)[:300]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt):
    data = _save(Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_argument():
    data = encode_png(np.zeros((10, 11, 3), np.uint8))
    assert decode_image(data, max_pixels=110).shape == (10, 11, 3)
    with pytest.raises(InvalidImage, match="11x10 = 110 pixels, more than the limit of 109 pixels"):
        decode_image(data, max_pixels=109)


def test_pixel_limit_env(monkeypatch):
    monkeypatch.setenv("RUNNER_MAX_IMAGE_PIXELS", "50")
    assert max_image_pixels() == 50
    with pytest.raises(InvalidImage, match="limit of 50 pixels"):
        decode_image(encode_png(np.zeros((10, 11, 3), np.uint8)))
    monkeypatch.setenv("RUNNER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="RUNNER_MAX_IMAGE_PIXELS"):
        max_image_pixels()
    for bad in ("0", "-5", "1e6", "2GiB"):
        monkeypatch.setenv("RUNNER_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ValueError, match="RUNNER_MAX_IMAGE_PIXELS must be a positive integer"):
            max_image_pixels()
    monkeypatch.delenv("RUNNER_MAX_IMAGE_PIXELS")
    assert max_image_pixels() == 2**26


def test_default_limit_is_8192_squared_and_pillow_guard_is_on():
    assert imaging.DEFAULT_MAX_IMAGE_PIXELS == 2**26 == 8192 * 8192
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels()  # Pillow's own check, at our limit


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression-bomb header)."""
    data = bytearray(encode_png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = 8 + 4  # signature + chunk length
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 4 + 13]))
    data[ihdr + 4 + 13:ihdr + 4 + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_rejected_before_decoding():
    with pytest.raises(InvalidImage, match="4900000000 pixels, more than the limit of 67108864 pixels") as info:
        decode_image(_png_claiming(70000, 70000))
    assert len(str(info.value)) < 200


def test_header_just_over_the_default_limit():
    with pytest.raises(InvalidImage, match="8193x8192 = 67117056 pixels, more than the limit of 67108864"):
        decode_image(_png_claiming(8193, 8192))


def test_pillow_guard_follows_the_per_call_limit():
    # Over twice the limit: refused by Pillow inside Image.open, reported as ours.
    with pytest.raises(InvalidImage, match="10000 pixels, more than the limit of 1000 pixels"):
        decode_image(_png_claiming(100, 100), max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels()  # restored after the call


def test_pillow_bomb_warning_raised_as_error_is_invalid_image():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no exception for Pillow's warning: it surfaces from Image.open
        with pytest.raises(InvalidImage, match="110 pixels, more than the limit of 109 pixels"):
            decode_image(encode_png(np.zeros((10, 11, 3), np.uint8)), max_pixels=109)


# ---------------------------------------------------------------- formats


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _grey_png(side: int) -> bytes:
    rows = b"".join(b"\0" + b"\x80" * side for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _ico_with_png(declared: int, side: int) -> bytes:
    """An ICO whose directory says declared x declared and whose PNG is side x side."""
    png = _grey_png(side)
    return (struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 32, len(png), 22)
            + png)


def _icns_with_png(side: int) -> bytes:
    """An ICNS whose 512x512 ('ic09') entry holds a side x side PNG."""
    png = _grey_png(side)
    entry = b"ic09" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


@pytest.mark.parametrize("data", [_ico_with_png(16, 96), _icns_with_png(96)], ids=["ICO", "ICNS"])
def test_icon_formats_are_refused_before_decoding(data):
    # Both hide a picture bigger than they declare (the pixel limit saw only 16x16 / 512x512).
    with pytest.raises(InvalidImage, match=r"not an image in a known format \(accepted: JPEG, PNG, BMP, TIFF") as info:
        decode_image(data, max_pixels=50 * 50)
    assert len(str(info.value)) < 200


def test_accepted_formats():
    Image.init()
    assert set(ACCEPTED_FORMATS) <= set(Image.OPEN)
    assert not {"ICO", "ICNS", "EPS", "PSD", "CUR", "DCX", "FITS", "WMF", "XPM"} & set(ACCEPTED_FORMATS)


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                     ("WEBP", {"lossless": True}), ("GIF", {}), ("PPM", {})],
                         ids=["PNG", "BMP", "TIFF", "TIFF-LZW", "WEBP", "GIF", "PPM"])
def test_each_accepted_format_decodes(fmt, kw):
    img = _palette_image() if fmt == "GIF" else Image.fromarray(RGB)
    expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(decode_image(_save(img, fmt, **kw)), expected)


def test_mpo_decodes_its_first_picture():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "MPO", save_all=True,
                                                   append_images=[Image.new("RGB", (40, 30), (200, 0, 0))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    out = decode_image(buf.getvalue())
    _check(out, 30, 40)
    assert np.abs(out[15, 20].astype(int) - (10, 200, 30)).max() < 8


# ---------------------------------------------------------------- memory


def _mode_image(mode: str, side: int) -> bytes:
    rng = np.random.default_rng(3)
    if mode == "RGB":
        return _save(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))
    if mode in ("RGBA", "LA"):
        img = Image.fromarray(rng.integers(0, 256, (side, side, 4), dtype=np.uint8), "RGBA")
        return _save(img if mode == "RGBA" else img.convert("LA"))
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 64, (side, side), dtype=np.uint8), "P")
        img.putpalette(rng.integers(0, 256, 64 * 3, dtype=np.uint8).tobytes())
        return _save(img, transparency=3)
    if mode == "I;16":
        return _save(Image.fromarray(rng.integers(0, 65536, (side, side), dtype=np.uint16)))
    if mode == "I":
        return _save(Image.fromarray(rng.integers(-1000, 100000, (side, side), dtype=np.int32)), "TIFF")
    values = rng.normal(0, 1000, (side, side)).astype(np.float32)
    values[0, :3] = np.nan, np.inf, -np.inf
    return _save(Image.fromarray(values), "TIFF")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16", "I", "F"])
def test_conversion_makes_no_full_size_copy(mode, monkeypatch):
    """Python-side memory (numpy, bytes) while decoding: the result plus strip-sized temporaries.

    The former conversions held float64 or ``tobytes`` copies of the whole picture (2x-4x the result).
    """
    monkeypatch.setattr(imaging, "_STRIP_PIXELS", 4096)
    data = _mode_image(mode, 512)
    assert Image.open(io.BytesIO(data)).mode == mode
    expected = decode_image(data)  # also warms up the plugins
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = decode_image(data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, expected)
    assert peak < out.nbytes * 1.25, (peak, out.nbytes)  # the file's read buffer (64 KiB) counts too


def test_float_conversion_matches_the_float64_reference():
    values = np.random.default_rng(5).normal(100, 3000, (64, 96)).astype(np.float32)
    values[3, 4] = np.nan
    ref = np.nan_to_num(values.astype(np.float64), nan=0.0)
    ref = np.clip(np.rint(ref * (255.0 / ref.max())), 0, 255).astype(np.uint8)
    out = decode_image(_save(Image.fromarray(values), "TIFF"))[:, :, 0]
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out != ref).mean() < 0.001


# -- decoding no more pixels than the model needs --------------------------------

def _jpeg(width, height, orientation=None):
    from PIL import Image as _Image

    img = _Image.new("RGB", (width, height), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, width // 2, height // 2))  # blue top-left quarter
    buf = io.BytesIO()
    exif = _Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_jpeg_is_decoded_at_the_scale_the_model_needs():
    from common.imaging import decode_image_for

    pixels, full = decode_image_for(_jpeg(1920, 1080), lambda w, h: (w // 3, h // 3))
    assert full == (1920, 1080)
    assert pixels.shape == (540, 960, 3)  # 1/2 is the smallest DCT scale still >= 640x360
    pixels, full = decode_image_for(_jpeg(1920, 1080), lambda w, h: (100, 60))
    assert (full, pixels.shape) == ((1920, 1080), (135, 240, 3))  # 1/8
    assert tuple(pixels[10, 10]) == pytest.approx((30, 30, 200), abs=12)


def test_reduced_decoding_respects_exif_rotation():
    from common.imaging import decode_image_for

    pixels, full = decode_image_for(_jpeg(1920, 1080, orientation=6), lambda w, h: (w // 4, h // 4))
    assert full == (1080, 1920)  # upright size
    assert pixels.shape == (480, 270, 3)
    # Orientation 6 rotates 90° clockwise: the stored top-left quarter ends up top-right.
    assert tuple(pixels[10, -10]) == pytest.approx((30, 30, 200), abs=12)


def test_no_reduction_when_the_model_needs_more_pixels_or_the_format_cannot():
    from common.imaging import decode_image_for

    pixels, full = decode_image_for(_jpeg(320, 200), lambda w, h: (640, 400))
    assert (full, pixels.shape) == ((320, 200), (200, 320, 3))
    png = io.BytesIO()
    Image.new("RGB", (1920, 1080)).save(png, format="PNG")
    pixels, full = decode_image_for(png.getvalue(), lambda w, h: (100, 60))
    assert (full, pixels.shape) == ((1920, 1080), (1080, 1920, 3))


def _tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A minimal little-endian grey TIFF with one tile of tile x tile declared (data left short)."""
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
               (322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 10 + 4), (325, 4, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + zlib.compress(b"\x00" * 64)[:16]


def test_a_tiff_declaring_a_huge_tile_is_refused_before_decoding():
    # 64x64 pixels, but libtiff would allocate the whole declared tile first.
    with pytest.raises(InvalidImage, match="TIFF tile or strip of 4096x4096"):
        decode_image(_tiled_tiff(64, 64, 4096), max_pixels=1_000_000)
