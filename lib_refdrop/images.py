"""Images and subject masks given as arguments: decoded, checked and normalised before anything uses them.

Every value is untrusted (an API client sends base64 text; a panel sends what gradio made of an upload), so:
base64 text is capped (``MAX_BASE64_CHARS``), only PNG, JPEG and WebP are decoded, the pixel count is checked
from the header before any pixel is decoded (``MAX_PIXELS``, independent of PIL's global ``MAX_IMAGE_PIXELS``,
which a host may have switched off), and every decoder error becomes a ``RefDropError`` naming the argument.

Accepted forms: nothing (None, ""), a PIL image, a numpy uint8 array (HxW, HxWx3, HxWx4: gradio 3 gives numpy or
PIL), base64 text or a data URL (the API), a gradio 3 sketch ``{"image", "mask"}`` and a gradio 4 ImageEditor
value ``{"background", "layers", "composite"}``.

``parse_image`` gives an RGB image; transparent parts are laid over white. ``parse_mask`` gives an "L" image of
0 (not the subject) and 255 (the subject): the mask's grey value, converted as ``Image.convert("L")``, counts as
subject where it is 128 or more. A mask with an alpha channel whose colour is one flat colour (strokes on a
transparent sheet) is read from its alpha instead. From a sketch or an ImageEditor value the painted strokes are the
mask; when nothing is painted the uploaded picture itself must be a black-and-white mask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re

import numpy as np
from PIL import Image, ImageChops, ImageOps

from .errors import RefDropError

MAX_PIXELS = 4096 * 4096
# Any 8-bit PNG, JPEG or WebP of MAX_PIXELS fits: at most 5 bytes a pixel (an uncompressed RGBA PNG takes 4, a JPEG
# of noise at quality 100 about 4.1), as base64 (4/3) with line breaks (78/76) and a data-URL prefix: under 3/2
MAX_BASE64_CHARS = 5 * MAX_PIXELS * 3 // 2  # 120 MiB (docs/api.md)
FORMATS = ("PNG", "JPEG", "WEBP")
SUBJECT_LEVEL = 128  # grey values from here up are the subject
# An unpainted sketch's picture counts as a black-and-white mask when at most this share of its pixels is grey
# (anti-aliased edges, JPEG noise); a photograph uploaded by mistake has far more.
MAX_GREY_SHARE = 0.1
_DATA_URL = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.ASCII)
_BINARY_TABLE = [255 if v >= SUBJECT_LEVEL else 0 for v in range(256)]
_GRADIO3_SKETCH = {"image", "mask"}
_GRADIO4_EDITOR = {"background", "layers", "composite"}


def parse_image(value, name: str) -> Image.Image | None:
    """An RGB image from any accepted form, or None for none; RefDropError naming ``name`` otherwise."""
    if isinstance(value, dict):
        value = _editor_picture(value, name)
    image = _decoded(value, name)
    return None if image is None else _rgb(image)


def parse_mask(value, name: str) -> Image.Image | None:
    """A subject mask ("L", 0 or 255) from any accepted form, or None for none; RefDropError naming ``name``."""
    if isinstance(value, dict):
        return _painted_mask(value, name)
    image = _decoded(value, name)
    return None if image is None else _binary(_grey(image))


def mask_from_file(data: bytes, name: str) -> Image.Image:
    """A mask from a file's bytes (the one kept with a stored reference: untrusted like any argument)."""
    image = _open(data, name)
    _check_size(image.width, image.height, name)
    return _binary(_grey(image))


def mask_digest(mask: Image.Image) -> str:
    """12 hex digits naming a mask's content, for the record in an infotext (its size and pixels, not a file's
    bytes, so the same mask gives the same digest whatever encoder wrote or reads it)."""
    head = f"{mask.width}x{mask.height}:".encode("ascii")
    return hashlib.sha256(head + mask.convert("L").tobytes()).hexdigest()[:12]


# -- one picture from any form ----------------------------------------------------------------------------------

def _decoded(value, name: str) -> Image.Image | None:
    """A loaded PIL image of at most ``MAX_PIXELS`` pixels (any mode), or None for nothing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        image = _from_array(value, name)
    elif isinstance(value, str):
        image = _from_base64(value, name)
    else:
        raise RefDropError(
            f"RefDrop: '{name}' must be an image (a PNG, JPEG or WebP file as base64 text), got {_kind(value)}"
        )
    _check_size(image.width, image.height, name)
    return image


def _kind(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a value of type {type(value).__name__}"


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise RefDropError(
            f"RefDrop: '{name}' is {width}×{height} pixels, more than the {MAX_PIXELS:,} allowed (4096×4096)"
        )
    if width * height == 0:
        raise RefDropError(f"RefDrop: '{name}' is an image without pixels ({width}×{height})")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not shape_ok or array.dtype != np.uint8:
        raise RefDropError(
            f"RefDrop: '{name}' must be an 8-bit image array of shape HxW, HxWx3 or HxWx4, got shape "
            f"{tuple(array.shape)} of {array.dtype}"
        )
    _check_size(array.shape[1], array.shape[0], name)
    return Image.fromarray(np.ascontiguousarray(array), mode={2: "L", 3: "RGB", 4: "RGBA"}[
        2 if array.ndim == 2 else array.shape[2]])


def _from_base64(text: str, name: str) -> Image.Image:
    if len(text) > MAX_BASE64_CHARS:
        raise RefDropError(
            f"RefDrop: '{name}' is {len(text):,} characters of base64, more than the {MAX_BASE64_CHARS:,} allowed"
        )
    text = text.strip()
    prefix = _DATA_URL.match(text)
    if prefix:
        text = text[prefix.end():]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RefDropError(
            f"RefDrop: '{name}' is neither an image nor base64 text of one (a PNG, JPEG or WebP file)"
        ) from None
    return _open(data, name)


def _open(data: bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError:  # PIL's own check, where a host left it on: far beyond MAX_PIXELS
        raise RefDropError(f"RefDrop: '{name}' has more pixels than the {MAX_PIXELS:,} allowed (4096×4096)") from None
    except Exception:  # noqa: BLE001 - any decoder error on untrusted bytes is "not an image we read"
        raise RefDropError(f"RefDrop: '{name}' is not a PNG, JPEG or WebP image") from None
    _check_size(image.width, image.height, name)  # from the header, before a pixel is decoded
    try:
        image.load()
        return ImageOps.exif_transpose(image)  # as gradio shows an upload: a phone's portrait photo stands up
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data raises many kinds; none may escape
        raise RefDropError(f"RefDrop: '{name}' is a damaged {image.format} image that cannot be read ({exc})") from None


# -- gradio's editor values ---------------------------------------------------------------------------------------

def _editor_form(value: dict, name: str) -> str:
    keys = set(value)
    if keys and keys <= _GRADIO3_SKETCH:
        return "sketch"
    if keys and keys <= _GRADIO4_EDITOR:
        return "editor"
    raise RefDropError(
        f"RefDrop: '{name}' must be an image; of dicts only gradio's {{'image', 'mask'}} and {{'background', "
        f"'layers', 'composite'}} are understood, got one with keys {_keys(value)}"
    )


def _keys(value: dict) -> str:
    keys = [k if isinstance(k, str) and len(k) <= 20 else f"<{type(k).__name__}>" for k in list(value)[:5]]
    return ", ".join(map(repr, keys)) + (" ..." if len(value) > 5 else "")


def _editor_picture(value: dict, name: str):
    """The picture of a sketch (its upload) or of an ImageEditor value (what it shows: the composite)."""
    if _editor_form(value, name) == "sketch":
        return value.get("image")
    composite = value.get("composite")
    return composite if composite is not None else value.get("background")


def _editor_layers(value: dict, name: str) -> list:
    layers = value.get("layers") or []
    if not isinstance(layers, (list, tuple)):
        raise RefDropError(f"RefDrop: '{name}' has 'layers' that are not a list of images")
    return list(layers)


def _painted_mask(value: dict, name: str) -> Image.Image | None:
    """The strokes painted in a sketch or an ImageEditor; when there are none, the uploaded black-and-white mask."""
    if _editor_form(value, name) == "sketch":
        strokes = _decoded(value.get("mask"), name)
        painted = None if strokes is None else _binary(_grey(strokes))
    else:
        painted = _layers_mask([_decoded(layer, name) for layer in _editor_layers(value, name)])
    if painted is not None and painted.getextrema()[1] > 0:
        return painted
    upload = _decoded(value.get("image") if "image" in value else value.get("background"), name)
    if upload is None:
        return None
    grey = _grey(upload)
    if _grey_share(grey) > MAX_GREY_SHARE:
        raise RefDropError(
            f"RefDrop: nothing is painted on '{name}' and its picture is not a black-and-white mask; paint the "
            "subject, or upload a mask that is white on the subject and black elsewhere"
        )
    return _binary(grey)


def _layers_mask(layers: list) -> Image.Image | None:
    """Where any ImageEditor layer is painted (its alpha; a layer without alpha by its grey values)."""
    painted = None
    for layer in (layer for layer in layers if layer is not None):
        strokes = _binary(layer.getchannel("A") if "A" in layer.getbands() else _grey(layer))
        if painted is not None and painted.size == strokes.size:
            strokes = ImageChops.lighter(painted, strokes)
        painted = strokes
    return painted


# -- modes -------------------------------------------------------------------------------------------------------

def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()  # never the caller's object: settings keep it while the caller may change theirs
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _grey(image: Image.Image) -> Image.Image:
    """The mask's grey values; from the alpha channel when the colour is one flat colour (strokes on a clear sheet)."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        colour = rgba.convert("RGB")
        flat = all(low == high for low, high in colour.getextrema())
        alpha = rgba.getchannel("A")
        if flat and alpha.getextrema()[0] != alpha.getextrema()[1]:
            return alpha
        return colour.convert("L")
    return image.convert("L")


def _binary(grey: Image.Image) -> Image.Image:
    return grey.point(_BINARY_TABLE)


def _grey_share(grey: Image.Image) -> float:
    histogram = grey.histogram()
    between = sum(histogram[32:224])
    return between / max(1, grey.width * grey.height)
