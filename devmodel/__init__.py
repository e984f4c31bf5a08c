"""Models to develop and measure RefDrop with, outside any WebUI, driven through the library's diffusers host
(lib_refdrop/diffusers.py).

``schedule``: SD's discrete noise schedule; ``sampling``: k-diffusion samplers that call a U-Net with the WebUI
hosts' batch layouts; ``unets``: random-weight U-Nets of the SD1.5 and SDXL architectures and their host. The tests
and the benchmarks sample with these; nothing here imports the tests.
"""
