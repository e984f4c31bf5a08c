"""Images and masks as arguments (lib_refdrop/images.py): every form the panel and the API send, and untrusted
bytes refused with a message naming the argument before anything large is decoded."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from lib_refdrop import images
from lib_refdrop.errors import RefDropError
from lib_refdrop.images import mask_digest, parse_image, parse_mask


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def gradient(width: int = 16, height: int = 12) -> Image.Image:
    """An RGB picture whose every pixel differs from its neighbours (a wrong crop or flip shows)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x * 15, y * 20, (x + y) * 7], axis=-1).astype(np.uint8), "RGB")


def disc_mask(size: int = 16) -> Image.Image:
    y, x = np.mgrid[:size, :size]
    return Image.fromarray(np.where((x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2, 255, 0)
                           .astype(np.uint8), "L")


# -- forms --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "   "])
def test_nothing_is_none(value):
    assert parse_image(value, "image") is None and parse_mask(value, "mask") is None


def test_a_pil_image_is_copied_as_rgb():
    original = gradient()
    parsed = parse_image(original, "image")
    original.putpixel((0, 0), (1, 2, 3))  # the caller's image changes after the settings were made
    assert parsed.mode == "RGB" and parsed.size == (16, 12) and parsed.getpixel((0, 0)) == (0, 0, 0)


def test_transparency_is_laid_over_white():
    rgba = Image.new("RGBA", (4, 4), (200, 10, 10, 0))
    rgba.putpixel((1, 1), (200, 10, 10, 255))
    parsed = parse_image(rgba, "image")
    assert parsed.getpixel((0, 0)) == (255, 255, 255) and parsed.getpixel((1, 1)) == (200, 10, 10)


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_numpy_arrays_as_gradio_3_gives_them(channels):
    rgb = pixels(gradient())
    array = {None: rgb[..., 0], 3: rgb, 4: np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)}
    parsed = parse_image(array[channels], "image")
    expected = np.repeat(rgb[..., :1], 3, axis=-1) if channels is None else rgb
    assert np.array_equal(pixels(parsed), expected)


@pytest.mark.parametrize("array, shape", [
    (np.zeros((4, 4, 2), np.uint8), "(4, 4, 2) of uint8"),
    (np.zeros((4, 4, 3), np.float32), "(4, 4, 3) of float32"),
    (np.zeros((2, 4, 4, 3), np.uint8), "(2, 4, 4, 3) of uint8"),
    (np.zeros((0, 4), np.uint8), "without pixels"),
])
def test_arrays_that_are_no_image_are_refused(array, shape):
    with pytest.raises(RefDropError, match=r"^RefDrop: 'image_2' .*" + shape.replace("(", r"\(").replace(")", r"\)")):
        parse_image(array, "image_2")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_base64_and_data_urls_of_lossless_files(fmt):
    picture = gradient()
    text = encoded(picture, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))  # as MIME encoders break lines
    for value in (text, f"data:image/{fmt.lower()};base64,{text}", wrapped):
        assert np.array_equal(pixels(parse_image(value, "image")), pixels(picture))


def test_a_jpeg_is_decoded_and_stood_up_by_its_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as a phone writes a portrait photo
    parsed = parse_image(encoded(gradient(16, 12), "JPEG", exif=exif, quality=95), "image")
    assert parsed.size == (12, 16)  # gradio shows an upload the same way (its decode_base64_to_image)


def test_a_gradio_3_sketch_gives_its_picture_and_its_painted_mask():
    picture, strokes = gradient(), Image.new("RGB", (16, 12), "black")
    strokes.paste((255, 255, 255), (2, 3, 6, 8))
    sketch = {"image": picture, "mask": strokes}
    assert np.array_equal(pixels(parse_image(sketch, "image")), pixels(picture))
    mask = parse_mask(sketch, "mask")
    assert mask.mode == "L" and mask.getbbox() == (2, 3, 6, 8) and set(mask.getdata()) == {0, 255}


def test_the_real_gradio_3_sketch_component_preprocess():
    """What gradio 3.41.2's ``Image(tool="sketch")`` hands the script: strokes from the canvas's alpha."""
    component = gr.Image(tool="sketch", type="pil", image_mode="RGBA")
    canvas = Image.new("RGBA", (16, 12), (0, 0, 0, 0))
    canvas.paste((255, 255, 255, 255), (4, 2, 10, 9))
    sent = {"image": "data:image/png;base64," + encoded(gradient()),
            "mask": "data:image/png;base64," + encoded(canvas)}
    value = component.preprocess(sent)
    assert parse_mask(value, "mask").getbbox() == (4, 2, 10, 9)
    assert np.array_equal(pixels(parse_image(value, "image")), pixels(gradient()))


def test_an_unpainted_sketch_takes_its_upload_as_a_black_and_white_mask():
    blank = Image.new("RGB", (16, 16), "black")
    assert np.array_equal(pixels(parse_mask({"image": disc_mask().convert("RGB"), "mask": blank}, "mask")),
                          pixels(disc_mask()))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    with pytest.raises(RefDropError, match="nothing is painted on 'mask_3' and its picture is not a black-and-white"):
        parse_mask({"image": photo, "mask": blank}, "mask_3")


def test_a_gradio_4_image_editor_value():
    background, composite = Image.new("RGBA", (16, 12), (9, 9, 9, 255)), gradient().convert("RGBA")
    layer = Image.new("RGBA", (16, 12), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (1, 1, 5, 5))
    second = Image.new("RGBA", (16, 12), (0, 0, 0, 0))
    second.paste((0, 0, 255, 200), (8, 6, 12, 10))
    value = {"background": background, "layers": [layer, second], "composite": composite}
    assert np.array_equal(pixels(parse_image(value, "image")), pixels(gradient()))
    mask = np.asarray(parse_mask(value, "mask")) > 0
    expected = np.zeros((12, 16), bool)
    expected[1:5, 1:5] = expected[6:10, 8:12] = True
    assert np.array_equal(mask, expected)  # both layers' strokes, whatever their colour
    assert parse_image({**value, "composite": None}, "image").getpixel((0, 0)) == (9, 9, 9)
    unpainted = {"background": disc_mask().convert("RGBA"), "layers": [], "composite": None}
    assert np.array_equal(pixels(parse_mask(unpainted, "mask")), pixels(disc_mask()))


@pytest.mark.parametrize("value, words", [
    ({"picture": "x"}, "keys 'picture'"),
    ({}, "keys"),
    ({"background": None, "layers": "strokes"}, "'layers' that are not a list"),
    ({"image": 5}, "got a value of type int"),
])
def test_dicts_that_are_no_editor_value_are_refused(value, words):
    with pytest.raises(RefDropError, match="^RefDrop: 'mask_2'") as info:
        parse_mask(value, "mask_2")
    assert words in str(info.value)


# -- masks ----------------------------------------------------------------------------------------------------------

def test_mask_grey_levels_from_128_are_the_subject():
    grey = Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8), "L")
    assert list(parse_mask(grey, "mask").getdata()) == [0, 0, 255, 255]
    assert list(parse_mask(grey.convert("RGB"), "mask").getdata()) == [0, 0, 255, 255]


def test_strokes_on_a_transparent_sheet_are_read_from_their_alpha():
    sheet = Image.new("RGBA", (4, 1), (255, 255, 255, 0))  # white everywhere: its colour says nothing
    sheet.putpixel((2, 0), (255, 255, 255, 255))
    assert list(parse_mask(sheet, "mask").getdata()) == [0, 0, 255, 0]
    drawn = Image.new("RGBA", (4, 1), (0, 0, 0, 255))  # a black-and-white drawing with alpha: its colour counts
    drawn.putpixel((1, 0), (255, 255, 255, 255))
    assert list(parse_mask(drawn, "mask").getdata()) == [0, 255, 0, 0]


def test_the_mask_digest_names_the_content_not_the_file():
    from_png = parse_mask(encoded(disc_mask()), "mask")
    from_array = parse_mask(np.asarray(disc_mask()), "mask")
    other = disc_mask()
    other.putpixel((0, 0), 255)
    digest = mask_digest(from_png)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert digest == mask_digest(from_array) != mask_digest(parse_mask(other, "mask"))


# -- untrusted bytes ------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims ``width`` x ``height`` pixels with almost no data behind it."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize("value, words", [
    (b64(png_claiming(4097, 4096)), "4097×4096 pixels, more than the 16,777,216 allowed"),
    (b64(png_claiming(60_000, 60_000)), "more pixels than the 16,777,216 allowed"),  # PIL's bomb check too
    (b64(png_claiming(8, 8)), "damaged PNG image"),  # its pixel data is cut short
    (b64(b"GIF89a" + b"\x00" * 30), "is not a PNG, JPEG or WebP image"),
    (encoded(gradient(), "BMP"), "is not a PNG, JPEG or WebP image"),
    (encoded(gradient(), "TIFF"), "is not a PNG, JPEG or WebP image"),
    (b64(b"just some text"), "is not a PNG, JPEG or WebP image"),
    ("not base64 at all!", "neither an image nor base64 text"),
    ("/etc/passwd", "neither an image nor base64 text"),  # never a path to read
    (5, "got a value of type int"),
    ([[0, 0], [0, 0]], "got a list of 2"),
    (b"\x89PNG", "got a value of type bytes"),
])
def test_bad_images_are_refused_naming_the_argument(value, words):
    for parse, name in ((parse_image, "image_3"), (parse_mask, "mask")):
        with pytest.raises(RefDropError, match=f"^RefDrop: '{name}' ") as info:
            parse(value, name)
        assert words in str(info.value)
        assert len(str(info.value)) < 300


def test_the_pixel_limit_holds_when_a_host_switched_pils_off(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(RefDropError, match="5000×5000 pixels"):
        parse_image(b64(png_claiming(5000, 5000)), "image")
    with pytest.raises(RefDropError, match="5000×4000 pixels"):
        parse_image(Image.new("L", (5000, 4000)), "image")  # a picture gradio already decoded is held to it too


def test_base64_text_over_the_limit_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_BASE64_CHARS", 1000)
    decoded = []
    monkeypatch.setattr(images.base64, "b64decode", lambda *a, **k: decoded.append(a) or b"")
    with pytest.raises(RefDropError, match="1,001 characters of base64, more than the 1,000 allowed"):
        parse_image("A" * 1001, "image")
    assert decoded == []


def test_the_limits_are_the_documented_ones():
    assert images.MAX_BASE64_CHARS == 120 * 1024 * 1024 and images.MAX_PIXELS == 4096 * 4096
    assert parse_image(Image.new("RGB", (4096, 4096)), "image").size == (4096, 4096)
    api_doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    assert "At most 120 MiB of text and 4096 × 4096\npixels" in api_doc


def test_any_8_bit_image_of_the_pixel_limit_fits_the_text_limit():
    """Noise is the worst case of every format (a photo compresses better): as a JPEG of quality 100 without chroma
    subsampling it takes more bytes a pixel than an uncompressed RGBA PNG (issue 18, item 8)."""
    noise = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    text = encoded(Image.fromarray(noise, "RGB"), "JPEG", quality=100, subsampling=0)
    del noise
    assert len(text) > 80 * 1024 * 1024  # far beyond the old 32 MiB cap
    assert parse_image(text, "image").size == (4096, 4096)
