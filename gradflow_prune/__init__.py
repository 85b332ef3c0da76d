"""Gradient-flow iterative pruning of diffusion U-Nets (arXiv 2501.09464, reconstructed).

Modules: diffusion (DDPM loss, DDIM sampling), surgery (channel groups, masks, physical removal),
criteria (random / magnitude / Taylor / GraSP-like scores), prune (one-shot and iterative soft
pruning), evaluate (FD, SSIM to the teacher, params, MACs, latency, figures), torch_import
(diffusers `UNet2DModel` state dicts), unet_io (saved U-Net folders), toolkit (the jitted pieces
of one U-Net config), inputs (splits and training batches), teacher (load or pre-train the dense
U-Net), evaluator (FD features, reference statistics, the teacher's samples), plan (which runs),
pruning_run (one run, resumable), report (summary, claim, pooled runs), train
(`train_and_evaluate`), bench (benchmark cases).
"""
