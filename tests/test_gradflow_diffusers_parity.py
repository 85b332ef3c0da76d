"""Our U-Net with weights read from a diffusers `UNet2DModel` (the google/ddpm-cifar10-32
architecture at a small width, random weights) computes what diffusers computes.

Runs where the `torch` extra is installed (torch + diffusers); skips elsewhere.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from gradflow_prune import torch_import
from shared.models import unet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CH, GROUPS = 32, 8  # google/ddpm-cifar10-32 is CH 128, 32 groups; the layout is the same


def _diffusers_unet():
  """google/ddpm-cifar10-32's UNet2DModel config (DDPM's CIFAR-10 U-Net) at base width CH."""
  return diffusers.UNet2DModel(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(CH, 2 * CH, 2 * CH, 2 * CH),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=GROUPS,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    time_embedding_type="positional",
    act_fn="silu",
    attention_head_dim=None,
    mid_block_scale_factor=1,
    center_input_sample=False,
  ).eval()


def test_forward_matches_diffusers():
  torch.manual_seed(0)
  model = _diffusers_unet()
  with torch.no_grad():
    for p in model.parameters():  # away from the zero / unit initialisations, so all of it counts
      p.normal_(0.0, 0.05)
  sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  cfg = unet.preset("cifar10", ch=CH, num_groups=GROUPS)
  params = torch_import.params_from_state_dict(sd, cfg)
  ours = unet.from_config_dict(cfg)
  rng = np.random.default_rng(0)
  x_BxHxWxC = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  t_B = np.array([3, 640])
  with torch.no_grad():
    theirs = model(torch.from_numpy(x_BxHxWxC.transpose(0, 3, 1, 2)), torch.from_numpy(t_B))
  theirs = theirs.sample.cpu().numpy().transpose(0, 2, 3, 1)
  mine = np.asarray(ours.apply({"params": params}, jnp.asarray(x_BxHxWxC), jnp.asarray(t_B)))
  rel = np.linalg.norm(mine - theirs) / np.linalg.norm(theirs)
  assert rel < 1e-4, rel
