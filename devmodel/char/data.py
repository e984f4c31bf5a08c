"""Synthetic data: a small "character" on a flat background, 32x32 RGB in [-1, 1].

A character has a background colour, a head colour, a body colour, a body pattern (plain / stripes / dots) and a
pose (arms up / out / down). The condition names only the pose; everything else is the "character" that only the
noise decides, which is what RefDrop should carry over from a reference. ``classify`` reads every attribute back
from pixels, so generated images are judged by what they show.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 32
POSES = ("up", "out", "down")          # the prompt names one of these
PATTERNS = ("plain", "stripes", "dots")
BACKGROUNDS = {
    "dark": (0.10, 0.10, 0.12),
    "light": (0.88, 0.88, 0.85),
    "teal": (0.15, 0.55, 0.55),
}
HEADS = {
    "skin": (0.96, 0.78, 0.62),
    "purple": (0.60, 0.25, 0.75),
    "orange": (1.00, 0.50, 0.05),
}
BODIES = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.15),
}
# The attributes the noise decides (a reference carries them), in the order Attributes lists them.
FREE = ("background", "head", "body", "pattern")
PATTERN_DARKEN = 0.35   # pattern pixels are the body colour times this
LEGS_RGB = (0.35, 0.30, 0.30)

_BG = torch.tensor(list(BACKGROUNDS.values()))
_HEAD = torch.tensor(list(HEADS.values()))
_BODY = torch.tensor(list(BODIES.values()))
_LEGS = torch.tensor(LEGS_RGB)


def _box(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Boolean mask ``[SIZE, SIZE]`` of rows y0..y1-1 and columns x0..x1-1."""
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


_yy, _xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
HEAD_MASK = (_yy - 7.5) ** 2 + (_xx - 15.5) ** 2 <= 4.6 ** 2          # a round head, rows 3..12
BODY_MASK = _box(13, 25, 11, 21)                                        # a 10 x 12 torso
LEGS_MASK = _box(25, 30, 12, 15) | _box(25, 30, 17, 20)
ARM_MASKS = {
    "up": _box(3, 14, 7, 9) | _box(3, 14, 23, 25),
    "out": _box(14, 16, 2, 11) | _box(14, 16, 21, 30),
    "down": _box(13, 25, 8, 10) | _box(13, 25, 22, 24),
}
_by, _bx = _yy - 13, _xx - 11   # body-relative coordinates
PATTERN_MASKS = {
    "plain": torch.zeros(SIZE, SIZE, dtype=torch.bool),
    "stripes": BODY_MASK & (_by % 4 >= 2),
    "dots": BODY_MASK & (_by % 4 >= 2) & (_bx % 4 >= 2) & (_bx < 10),
}
# Body pixels that no pattern darkens: where the body colour is read.
BODY_BASE = BODY_MASK & ~PATTERN_MASKS["stripes"] & ~PATTERN_MASKS["dots"]
BORDER = _box(0, SIZE, 0, SIZE) & ~_box(1, SIZE - 1, 1, SIZE - 1)
_HEAD_CORE = (_yy - 7.5) ** 2 + (_xx - 15.5) ** 2 <= 3.0 ** 2


@dataclass(frozen=True)
class Attributes:
    """What a picture shows (names from the palettes above)."""

    background: str
    head: str
    body: str
    pattern: str
    pose: str


def draw(background: torch.Tensor, head: torch.Tensor, body: torch.Tensor, pattern: torch.Tensor,
         pose: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1] from integer attribute indices ``[B]``."""
    n = background.shape[0]
    img = _BG[background].view(n, 3, 1, 1).expand(n, 3, SIZE, SIZE).clone()

    def paint(mask: torch.Tensor, rgb: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        rows = torch.ones(n, dtype=torch.bool) if rows is None else rows
        m = mask.view(1, 1, SIZE, SIZE) & rows.view(n, 1, 1, 1)
        img.copy_(torch.where(m, rgb.view(-1, 3, 1, 1).expand(n, 3, SIZE, SIZE), img))

    for p, name in enumerate(POSES):
        paint(ARM_MASKS[name], _HEAD[head], pose == p)   # bare arms: the head's colour
    paint(LEGS_MASK, _LEGS)
    paint(BODY_MASK, _BODY[body])
    for p, name in enumerate(PATTERNS):
        if name != "plain":
            paint(PATTERN_MASKS[name], _BODY[body] * PATTERN_DARKEN, pattern == p)
    paint(HEAD_MASK, _HEAD[head])
    return img * 2 - 1


def random_labels(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every attribute drawn uniformly and independently: indices ``[n]`` by attribute name."""
    sizes = {"background": len(BACKGROUNDS), "head": len(HEADS), "body": len(BODIES), "pattern": len(PATTERNS),
             "pose": len(POSES)}
    return {name: torch.randint(size, (n,), generator=generator) for name, size in sizes.items()}


def random_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, pose labels)``."""
    labels = random_labels(n, generator)
    return draw(**labels), labels["pose"]


def _nearest(rgb: torch.Tensor, palette: torch.Tensor, names) -> tuple[int, str]:
    i = int((palette - rgb).norm(dim=1).argmin())
    return i, list(names)[i]


def classify(image: torch.Tensor) -> Attributes:
    """Read the attributes of one image ``[3, SIZE, SIZE]`` in [-1, 1] from its pixels.

    The colours are medians over regions no other part covers (border; head centre; body pixels that no pattern
    darkens), each snapped to its palette; pattern and pose are then those whose drawing, with the colours read,
    is nearest to the image in squared error over the body and over the arms' regions.
    """
    rgb = (image.clamp(-1, 1) + 1) / 2                               # [3, SIZE, SIZE]
    flat = rgb.permute(1, 2, 0)                                      # [SIZE, SIZE, 3]
    b, background = _nearest(flat[BORDER].median(dim=0).values, _BG, BACKGROUNDS)
    h, head = _nearest(flat[_HEAD_CORE].median(dim=0).values, _HEAD, HEADS)
    c, body = _nearest(flat[BODY_BASE].median(dim=0).values, _BODY, BODIES)
    one = torch.ones(1, dtype=torch.long)
    body_err = []
    for p in range(len(PATTERNS)):
        drawn = (draw(one * b, one * h, one * c, one * p, one * 0)[0] + 1) / 2
        body_err.append(float(((drawn - rgb) ** 2)[:, BODY_MASK].sum()))
    arms = ARM_MASKS["up"] | ARM_MASKS["out"] | ARM_MASKS["down"]
    region = arms & ~BODY_MASK & ~HEAD_MASK
    pose_err = []
    for p in range(len(POSES)):
        drawn = (draw(one * b, one * h, one * c, one * 0, one * p)[0] + 1) / 2
        pose_err.append(float(((drawn - rgb) ** 2)[:, region].sum()))
    pattern = PATTERNS[min(range(len(PATTERNS)), key=body_err.__getitem__)]
    pose = POSES[min(range(len(POSES)), key=pose_err.__getitem__)]
    return Attributes(background, head, body, pattern, pose)


def labels_of(attrs: Attributes) -> dict[str, str]:
    return {"background": attrs.background, "head": attrs.head, "body": attrs.body, "pattern": attrs.pattern,
            "pose": attrs.pose}
