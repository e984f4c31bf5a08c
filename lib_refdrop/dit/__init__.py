"""RefDrop on DiT models (Flux, Chroma): the paper's eq. 15 in the joint attention of each transformer block.

``blocks`` computes a Flux or Chroma double- or single-stream block from its modules with the joint attention made
reachable; ``guide`` turns RefDrop's attn1-style patch (``attn/patches.py``) into the image-token correction
``X'_img + (patch(Q_img, K_img, V_img) - Attn(Q_img, K_img, V_img))``; ``layers`` names the blocks as layer ids.
Pure torch: the hosts hand in their own kernels (``patcher/kernels.py``).
"""
