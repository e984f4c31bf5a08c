"""The toy dataset: one flat-coloured shape on a flat background, 16x16 RGB; the prompt names the shape.

``data`` draws and reads the images, ``MODEL`` is the trained model (``python -m devmodel.train toy``),
``measure`` prints RefDrop's effect on it, ``spread`` how the gaps vary between seed blocks (the basis of
tests/test_toymodel.py's thresholds), ``measure_sources`` the same for the reference sources
(tests/test_toymodel_sources.py). TRAINING.md has the training record and the measurements.
"""

from pathlib import Path

from ..model import DevModel, Training, pixel_unet
from .data import SHAPES, SIZE, random_batch

MODEL = DevModel(
    name="toy",
    labels=SHAPES,
    label_name="shape",
    size=SIZE,
    # SD1.5's pattern with one level less: attention at 16x16 and 8x8 (and the 4x4 middle), resnets only at 4x4
    unet_config=pixel_unet(SIZE, ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                           ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64, 64),
                           layers_per_block=1, heads=4),
    random_batch=random_batch,
    weights=Path(__file__).with_name("weights.safetensors"),
    sha256="47e65bf2e5d7a2a865da84781a3a8f43c18c1b4b14b2f6a54bf13f7c1b0b6f99",
    training=Training(steps=500, batch=32, lr=1e-3, cosine_decay=False),
    steps=12,
    preview_scale=4,
)
