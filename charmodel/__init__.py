"""A trained 32x32 pixel-space "character" diffusion U-Net with SD1.5's block layout, to measure RefDrop on.

See charmodel/TRAINING.md for the model, its training record and what was measured on it.
"""
