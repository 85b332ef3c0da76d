"""Gradient-flow iterative pruning of diffusion U-Nets (arXiv 2501.09464, reconstructed).

Modules: diffusion (DDPM loss, DDIM sampling), surgery (channel groups, masks, physical removal),
criteria (random / magnitude / Taylor / GraSP-like scores), prune (one-shot and iterative soft
pruning), evaluate (FD, SSIM to the teacher, params, MACs, latency, figures), torch_import
(diffusers `UNet2DModel` state dicts), train (`train_and_evaluate`).
"""
