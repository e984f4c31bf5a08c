"""Models to develop and measure RefDrop with, outside any WebUI, driven through the library's diffusers host
(lib_refdrop/diffusers.py).

- ``schedule``: SD's discrete noise schedule; ``sampling``: k-diffusion samplers that call a U-Net with the WebUI
  hosts' batch layouts; ``unets``: random-weight U-Nets of the SD1.5 and SDXL architectures and their host.
- Two small trained pixel-space models, one definition: ``model`` (the U-Net and the learned prompts, ``DevModel``),
  ``pipeline`` (``Pipeline``: generate, Save and Use), ``train`` (``python -m devmodel.train toy|char``), and one
  dataset each: ``toy`` (a shape, 16x16) and ``char`` (a character with SD1.5's block layout, 32x32), each with its
  data, weights, TRAINING.md and measurement scripts.

The tests and the benchmarks sample with these; nothing here imports the tests.
"""
