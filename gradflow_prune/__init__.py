"""Gradient-flow iterative pruning of diffusion U-Nets (arXiv 2501.09464, reconstructed).

Modules: diffusion (DDPM loss, DDIM sampling), surgery (channel groups, masks, physical removal),
criteria (random / magnitude / Taylor / GraSP-like scores), prune (one-shot and iterative soft
pruning), evaluate (FD, SSIM to the teacher, params, MACs, latency, figures), torch_import
(diffusers `UNet2DModel` state dicts), unet_io (saved U-Net folders), toolkit (the jitted pieces
of one U-Net config), inputs (splits and training batches), teacher (load or pre-train the dense
U-Net), evaluator (FD features, reference statistics, the teacher's samples), plan (which runs),
pruning_run (one run, resumable), report (summary, claim, paired bootstrap, pooled runs), stats
(paired bootstrap confidence intervals), export (a pruned U-Net as safetensors + JSON;
`gradflow_prune.load(dir)` reloads it for sampling), sample (its command line), train
(`train_and_evaluate`), bench (benchmark cases).
"""

from gradflow_prune.export import PrunedUNet, load

__all__ = ["PrunedUNet", "load"]
