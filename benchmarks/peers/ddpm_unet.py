"""PyTorch peer of the gradflow_prune U-Net cases: the DDPM CIFAR-10 training step and the
forward that sampling repeats (Ho et al. 2020).

    python -m benchmarks.peers.ddpm_unet --steps 20 --warmup 5 [--compile] --out peers.jsonl

The network is the one `shared.models.unet.UNet` builds for configs/gradflow_prune.py:paper
(35,746,307 parameters, checked in tests/test_peers.py): ch 128, ch_mult (1, 2, 2, 2), 2 ResBlocks
a level, single-head attention at 16x16, dropout 0.1, GroupNorm(32, eps 1e-6), swish, sinusoidal
time embedding -> 512 -> 512, stride-2 conv downsampling, nearest x2 + conv upsampling; NCHW, as
the reference PyTorch code (ermongroup/ddim) runs it. Cases (gradflow_prune/bench.py's shapes):
  train    `pytorch/ddpm_train`, batch 128 of 32x32x3: t ~ U{0..999}, eps-MSE, Adam 2e-4, global
           norm clip 1.0, EMA 0.9999 of the params (the JAX step's `pretrain` optimizer).
  sample   `pytorch/ddpm_forward`, batch 256: one no-grad forward at t = 500 (image-steps/s).
Default dtype float32 with TF32 matmuls and convolutions (the faster of the reference's two
modes); `--dtype bfloat16` autocasts. `--compile` compiles the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchmarks.peers import common

CASES = {"train": "pytorch/ddpm_train", "sample": "pytorch/ddpm_forward"}
PAPER = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_res=(16,), groups=32)
TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_res=(16,), groups=8)
RESOLUTION, DROPOUT, T = 32, 0.1, 1000
LR, CLIP, EMA = 2e-4, 1.0, 0.9999


def build(torch, ch, ch_mult, num_res_blocks, attn_res, groups, dropout=DROPOUT):
  """The U-Net as an nn.Module: `model(x_Bx3xHxW, t_B) -> eps_Bx3xHxW`."""
  nn, F = torch.nn, torch.nn.functional

  def norm(c):
    return nn.GroupNorm(groups, c, eps=1e-6)

  class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
      super().__init__()
      self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
      self.temb_proj = nn.Linear(temb, cout)
      self.norm2, self.drop = norm(cout), nn.Dropout(dropout)
      self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
      self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
      h = self.conv1(F.silu(self.norm1(x)))
      h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
      h = self.conv2(self.drop(F.silu(self.norm2(h))))
      return self.shortcut(x) + h

  class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, q/k/v/proj 1x1 over channels."""

    def __init__(self, c: int):
      super().__init__()
      self.norm = norm(c)
      self.q, self.k, self.v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
      b, c, h, w = x.shape
      y = self.norm(x)
      q, k, v = (f(y).reshape(b, 1, c, h * w).transpose(2, 3) for f in (self.q, self.k, self.v))
      o = F.scaled_dot_product_attention(q, k, v)  # B x 1 x HW x C, scale 1/sqrt(C)
      return x + self.proj(o.transpose(2, 3).reshape(b, c, h, w))

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      temb = 4 * ch
      self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
      self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
      self.down, widths, cur, res = nn.ModuleList(), [ch], ch, RESOLUTION
      for i, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
          layer = nn.ModuleList([ResBlock(cur, ch * mult, temb)])
          cur = ch * mult
          if res in attn_res:
            layer.append(AttnBlock(cur))
          self.down.append(layer)
          widths.append(cur)
        if i < len(ch_mult) - 1:
          # DDPM's TF 'SAME' stride-2 conv: pad (0, 1) on each spatial axis, no padding inside.
          self.down.append(nn.ModuleList([nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cur, cur, 3, 2)]))
          widths.append(cur)
          res //= 2
      self.mid = nn.ModuleList([ResBlock(cur, cur, temb), AttnBlock(cur), ResBlock(cur, cur, temb)])
      self.up = nn.ModuleList()
      for i, mult in reversed(list(enumerate(ch_mult))):
        for _ in range(num_res_blocks + 1):
          layer = nn.ModuleList([ResBlock(cur + widths.pop(), ch * mult, temb)])
          cur = ch * mult
          if res in attn_res:
            layer.append(AttnBlock(cur))
          self.up.append(layer)
        if i > 0:
          self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2.0, mode="nearest")]))
          self.up.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, padding=1)]))
          res *= 2
      self.norm_out, self.conv_out = norm(cur), nn.Conv2d(cur, 3, 3, padding=1)

    def embed(self, t_B):
      half = ch // 2
      freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t_B.device) / (half - 1))
      angle = t_B.float()[:, None] * freqs[None]
      return self.temb(torch.cat([angle.sin(), angle.cos()], dim=1))

    @staticmethod
    def apply(layer, h, temb):
      for m in layer:
        h = m(h, temb) if isinstance(m, ResBlock) else m(h)
      return h

    def forward(self, x, t_B):
      temb = self.embed(t_B)
      h = self.conv_in(x)
      skips = [h]
      for layer in self.down:
        h = self.apply(layer, h, temb)
        skips.append(h)
      h = self.apply(self.mid, h, temb)
      for layer in self.up:
        if isinstance(layer[0], ResBlock):
          h = torch.cat([h, skips.pop()], dim=1)
        h = self.apply(layer, h, temb)
      return self.conv_out(F.silu(self.norm_out(h)))

  return UNet()


def _alphas_cumprod(torch, device):
  betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
  return torch.cumprod(1.0 - betas, 0).float().to(device)


def train_step(torch, device, args, dims: dict, batch: int):
  """`() -> None` running one denoising step (loss, backward, clip, Adam, EMA) on a fixed batch."""
  model = build(torch, **dims).to(device).train()
  params = [p for p in model.parameters()]
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.Adam(params, lr=LR, fused=device.type == "cuda")
  forward = torch.compile(model) if args.compile else model
  abar = _alphas_cumprod(torch, device)
  x0 = torch.rand(batch, 3, RESOLUTION, RESOLUTION, device=device) * 2 - 1

  def step():
    t = torch.randint(0, T, (batch,), device=device)
    noise = torch.randn_like(x0)
    a = abar[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with common.autocast(torch, device, args.dtype):
      eps = forward(x_t, t)
    loss = torch.nn.functional.mse_loss(eps.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1.0 - EMA)  # ema <- EMA * ema + (1 - EMA) * params

  return step, sum(p.numel() for p in params)


def sample_step(torch, device, args, dims: dict, batch: int):
  """`() -> None` running one no-grad forward at t = 500."""
  model = build(torch, **dims).to(device).eval()
  forward = torch.compile(model) if args.compile else model
  x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device)
  t = torch.full((batch,), 500, device=device, dtype=torch.long)

  def step():
    with torch.inference_mode(), common.autocast(torch, device, args.dtype):
      forward(x, t)

  return step, sum(p.numel() for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
  p = common.parser("benchmarks.peers.ddpm_unet", __doc__, tuple(CASES), dtype="float32")
  args = common.parse(p, argv)
  torch, device = common.torch_setup(args)
  dims = TINY if args.tiny else PAPER
  rows = []
  for what in args.what:
    batch = args.batch or (2 if args.tiny else {"train": 128, "sample": 256}[what])
    build_step = train_step if what == "train" else sample_step
    step, n_params = build_step(torch, device, args, dims, batch)
    timed = common.time_calls(torch, device, step, args.steps, args.warmup)
    meta = {"params": n_params, "image_size": RESOLUTION}
    if what == "train":
      meta.update(optimizer="adam", grad_clip=CLIP, ema_decay=EMA)
    rows.append(common.row(torch, device, args, CASES[what], batch, batch, timed, **meta))
  common.emit(rows, args.out)
  return 0


if __name__ == "__main__":
  common.run(main)
