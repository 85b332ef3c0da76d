"""Gradient-flow iterative pruning of diffusion U-Nets (arXiv 2501.09464, reconstructed).

Python API (arrays in, no workdir; `api.py`):

    pruned = gradflow_prune.prune(params, unet_config, images_uint8, keep=0.7,
                                  procedure="gradflow")   # or "oneshot"; criterion="grasp" | ...
    images01 = gradflow_prune.sample(pruned, 16, jax.random.PRNGKey(0), steps=10)  # [16, H, W, C]
    gradflow_prune.save("pruned/", pruned)          # model.safetensors + unet.json
    pruned = gradflow_prune.load("pruned/")         # a PrunedUNet: .config, .params, .macs, .eps

`params` / `unet_config`: a dense `shared.models.unet` U-Net (config dict, e.g.
`unet.preset("tiny8")`); images [N, H, W, C] uint8 at its resolution. The procedures it runs
(`procedures.oneshot`, `procedures.iterative`, `procedures.FlowConfig`) are in `procedures.py`.

Modules: diffusion (DDPM loss, DDIM sampling), surgery (channel groups, masks, physical removal),
criteria (random / magnitude / Taylor / GraSP-like scores), procedures (one-shot and iterative
soft pruning), evaluate (FD, SSIM to the teacher, params, MACs, latency, figures), torch_import
(diffusers `UNet2DModel` state dicts), unet_io (saved U-Net folders), toolkit (the jitted pieces
of one U-Net config), inputs (splits and training batches), teacher (load or pre-train the dense
U-Net), evaluator (FD features, reference statistics, the teacher's samples), plan (which runs),
pruning_run (one run, resumable), report (summary, claim, paired bootstrap, pooled runs), stats
(paired bootstrap confidence intervals), export (a pruned U-Net as safetensors + JSON), api
(prune / save / sample on arrays), sample (its command line), train (`train_and_evaluate`), bench
(benchmark cases).
"""

from gradflow_prune.api import prune, sample, save
from gradflow_prune.export import PrunedUNet, load

__all__ = ["PrunedUNet", "load", "prune", "sample", "save"]
