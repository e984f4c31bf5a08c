"""A tiny trained pixel-space diffusion model, so that RefDrop's effect is measured rather than assumed.

``data`` draws and reads the synthetic images, ``model`` builds the conditioned U-Net, ``train`` makes
``weights.safetensors``, ``sampling`` drives it through hostsim's attn1 host, ``measure`` prints the table and
``spread`` measures how the gaps vary between seed blocks (the basis of tests/test_toymodel.py's thresholds).
"""
