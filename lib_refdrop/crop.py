"""The hosts' "Crop and resize": which part of a picture fills a frame of another aspect ratio.

An image given as a reference is cut to the generation's aspect ratio before it is encoded
(``webui/hosts/image_pass.py``), and a mask drawn on a picture must be cut by the same box to land on the same
tokens, so both take the box from here.
"""

from __future__ import annotations

# Two aspect ratios this close are the same picture rounded to whole pixels (or to latent cells) at another size.
ASPECT_TOLERANCE = 0.02


def centre_box(width: int, height: int, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: the centred part of a ``width`` x ``height`` picture with the aspect ratio of
    ``frame_w`` x ``frame_h`` (the picture scaled to cover the frame, what sticks out cut off)."""
    scale = max(frame_w / width, frame_h / height)
    crop_w, crop_h = min(width, round(frame_w / scale)), min(height, round(frame_h / scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + max(crop_w, 1), top + max(crop_h, 1)


def same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two ``(width, height)`` sizes have the same aspect ratio, up to rounding."""
    return abs((size[0] / size[1]) / (other[0] / other[1]) - 1) <= ASPECT_TOLERANCE
