"""Synthetic data: one flat-coloured shape on a flat background, 16x16 RGB in [-1, 1].

The condition names only the shape; the shape colour, background colour, position and size are the "character"
that only the noise decides, which is what RefDrop should carry over from a reference. The classifiers read the
attributes back from pixels, so generated images are judged by what they show.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 16  # 16x16 rather than 32x32: training must fit a few minutes of a shared 2-core CPU
SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
BACKGROUNDS = {
    "dark": (0.1, 0.1, 0.12),
    "light": (0.88, 0.88, 0.85),
    "purple": (0.5, 0.25, 0.6),
}
MARGIN = 1          # shapes keep this many pixels from the border, so the border shows the background
RADIUS = (4, 6)     # half the shape's extent, inclusive range in pixels

_SHAPE_RGB = torch.tensor(list(SHAPE_COLOURS.values()))
_BG_RGB = torch.tensor(list(BACKGROUNDS.values()))


@dataclass(frozen=True)
class Attributes:
    """What a picture shows; ``None`` where the classifier cannot tell (e.g. no shape at all)."""

    shape: str | None
    colour: str | None
    background: str | None
    centre: tuple[float, float] | None


def _shape_mask(shape: int, cy: torch.Tensor, cx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean masks ``[B, SIZE, SIZE]`` of one shape kind for B centres and radii."""
    yy = torch.arange(SIZE, dtype=torch.float32).view(1, SIZE, 1)
    xx = torch.arange(SIZE, dtype=torch.float32).view(1, 1, SIZE)
    dy, dx = yy - cy.view(-1, 1, 1), xx - cx.view(-1, 1, 1)
    r = r.view(-1, 1, 1)
    if SHAPES[shape] == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    if SHAPES[shape] == "square":
        return (dy.abs() <= r * 0.85) & (dx.abs() <= r * 0.85)  # same area scale as the circle, roughly
    # triangle, apex up: inside when below the apex and within the widening sides
    return (dy <= r) & (dx.abs() <= (dy + r) / 2)


def draw(shape: torch.Tensor, colour: torch.Tensor, background: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor,
         r: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1] from integer attribute indices and float geometry."""
    img = _BG_RGB[background].view(-1, 3, 1, 1).expand(-1, 3, SIZE, SIZE).clone()
    fg = _SHAPE_RGB[colour].view(-1, 3, 1, 1)
    for s in range(len(SHAPES)):
        pick = shape == s
        if pick.any():
            mask = _shape_mask(s, cy[pick], cx[pick], r[pick]).unsqueeze(1)
            img[pick] = torch.where(mask, fg[pick].expand(-1, 3, SIZE, SIZE), img[pick])
    return img * 2 - 1


def random_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, shape labels)`` with every attribute drawn uniformly and independently."""
    def ints(high):
        return torch.randint(high, (n,), generator=generator)

    shape, colour, background = ints(len(SHAPES)), ints(len(SHAPE_COLOURS)), ints(len(BACKGROUNDS))
    r = torch.randint(RADIUS[0], RADIUS[1] + 1, (n,), generator=generator).float()
    lo, hi = MARGIN + r, SIZE - 1 - MARGIN - r
    cy = lo + torch.rand(n, generator=generator) * (hi - lo)
    cx = lo + torch.rand(n, generator=generator) * (hi - lo)
    return draw(shape, colour, background, cy, cx, r), shape


def _nearest(rgb: torch.Tensor, palette: torch.Tensor, names) -> str:
    return list(names)[int((palette - rgb).norm(dim=1).argmin())]


def classify(image: torch.Tensor) -> Attributes:
    """Read the attributes of one image ``[3, SIZE, SIZE]`` in [-1, 1] from its pixels.

    Background = median of the border pixels; shape pixels = those clearly away from it (half the smallest
    distance between a shape colour and a background colour); shape kind = that of the drawable shape (any kind,
    size and position) that overlaps those pixels best (intersection over union, which stray speckle lowers for
    every candidate alike).
    """
    rgb = ((image.clamp(-1, 1) + 1) / 2).reshape(3, -1).T          # [pixels, 3]
    grid = rgb.view(SIZE, SIZE, 3)
    border = torch.cat([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
    bg_rgb = border.median(dim=0).values
    background = _nearest(bg_rgb, _BG_RGB, BACKGROUNDS)
    mask = (rgb - bg_rgb).norm(dim=1) > _THRESHOLD
    if int(mask.sum()) < 12:  # fewer pixels than the smallest shape draws: nothing there
        return Attributes(None, None, background, None)
    colour = _nearest(rgb[mask].median(dim=0).values, _SHAPE_RGB, SHAPE_COLOURS)
    m = mask.float()
    inter = _TEMPLATES @ m
    iou = inter / (_TEMPLATES.sum(dim=1) + m.sum() - inter)
    best = int(iou.argmax())
    return Attributes(SHAPES[int(_TEMPLATE_SHAPE[best])], colour, background, _TEMPLATE_CENTRE[best])


def _templates() -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    """Every drawable shape on a half-pixel grid of centres: masks ``[T, SIZE*SIZE]``, their kinds and centres."""
    masks, kinds, centres = [], [], []
    for r in range(RADIUS[0], RADIUS[1] + 1):
        grid = torch.arange(MARGIN + r, SIZE - 1 - MARGIN - r + 0.01, 0.5)
        cy, cx = (t.reshape(-1) for t in torch.meshgrid(grid, grid, indexing="ij"))
        rr = torch.full_like(cy, float(r))
        for s in range(len(SHAPES)):
            masks.append(_shape_mask(s, cy, cx, rr).reshape(len(cy), -1))
            kinds.append(torch.full((len(cy),), s))
            centres += list(zip(cy.tolist(), cx.tolist(), strict=True))
    return torch.cat(masks).float(), torch.cat(kinds), centres


_THRESHOLD = float(torch.cdist(_SHAPE_RGB, _BG_RGB).min()) / 2
_TEMPLATES, _TEMPLATE_SHAPE, _TEMPLATE_CENTRE = _templates()
