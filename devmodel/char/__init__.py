"""The character dataset: a small character on a flat background, 32x32 RGB; the prompt names the pose.

The model has SD1.5's block layout, narrowed: CrossAttnDownBlock2D x3 + DownBlock2D, a mid block with attention,
UpBlock2D + CrossAttnUpBlock2D x3, two layers per block. The hosts' ldm numbering (lib_refdrop/diffusers.py
``layer_map``) then gives SD1.5's attn1 blocks at SD1.5's four token levels (1/1, 1/2, 1/4, 1/8 of the image side):
input1, input2, output9..11 at 32x32 tokens; input4, input5, output6..8 at 16x16; input7, input8, output3..5 at 8x8;
middle0 at 4x4. The first output block with attention is OUT03, as on SD1.5 ("skip the first up-sampling block").

``data`` draws and reads the images, ``MODEL`` is the trained model (``python -m devmodel.train char``), ``measure``,
``ablation``, ``masks`` and ``mixed_cfg`` measure RefDrop on it (tests/test_charmodel.py's thresholds come from
them). TRAINING.md has the training record and the measurements.
"""

from pathlib import Path

from ..model import DevModel, Training, pixel_unet
from .data import POSES, SIZE, random_batch

MODEL = DevModel(
    name="char",
    labels=POSES,
    label_name="pose",
    size=SIZE,
    unet_config=pixel_unet(SIZE, ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(32, 32, 64, 64),
                           layers_per_block=2, heads=(1, 2, 4, 4)),  # one head at 32x32 tokens halves training time
    random_batch=random_batch,
    weights=Path(__file__).with_name("weights.safetensors"),
    sha256="8873ed878250c74e58f6913f6bdeb49ed1f5dca9d9e181f023f13b79ca8d29e7",
    training=Training(steps=650, batch=16, lr=2e-3, cosine_decay=True),
    steps=8,  # 8 and 12 steps gave the same classes on seeds 0..11; 8 keeps the measures affordable
    preview_scale=2,
)
