"""PyTorch peer of `mcae/mae_pretrain`: one MAE ViT-B/16 pre-training step (He et al. 2021).

    python -m benchmarks.peers.mae_vit_b16 --steps 20 --warmup 5 [--compile] --out peers.jsonl

The JAX case's shapes (mcae/bench.py with configs/mcae.py:paper): batch 256 of 224x224x3 images
in [0, 1], a random horizontal flip, patches 16, encoder ViT-B (768 wide, 12 blocks, 12 heads, cls
token, fixed 2D sin-cos positions) on the 25% of patches a per-image random mask keeps, decoder
512 wide x 8 blocks x 16 heads over all 196 + 1 tokens, normalised-pixel MSE on the masked
patches, AdamW (0.9, 0.95), weight decay 0.05 on matrices only, bf16 autocast with float32
params. Attention is `F.scaled_dot_product_attention` (PyTorch's fused kernels, as timm's).
`--compile` compiles the forward + loss; the backward runs through AOTAutograd's compiled graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.peers import common

CASE = "pytorch/mae_pretrain"
PAPER = dict(
  image=224, patch=16, width=768, depth=12, heads=12, dec_width=512, dec_depth=8, dec_heads=16
)
TINY = dict(image=32, patch=8, width=32, depth=1, heads=2, dec_width=32, dec_depth=1, dec_heads=2)
MASK_RATIO, LR, BETAS, WEIGHT_DECAY = 0.75, 1.5e-4, (0.9, 0.95), 0.05


def build(torch, image, patch, width, depth, heads, dec_width, dec_depth, dec_heads):
  """The MAE as an nn.Module: `model(images_Bx3xHxW) -> loss`."""
  nn, F = torch.nn, torch.nn.functional

  def sincos_2d(dim: int, grid: int):
    """(1 + grid^2, dim) fixed positions: sin/cos of the column, then of the row; 0 for cls."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def encode(pos):
      angle = pos.flatten().double()[:, None] * omega[None]
      return torch.cat([angle.sin(), angle.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb]).float()[None]

  class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, 4x wide)."""

    def __init__(self, dim: int, num_heads: int):
      super().__init__()
      self.heads = num_heads
      self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
      self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x_BxNxD):
      b, n, d = x_BxNxD.shape
      qkv = self.qkv(self.norm1(x_BxNxD)).reshape(b, n, 3, self.heads, d // self.heads)
      q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B x heads x N x d/heads
      o_BxNxD = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
      x_BxNxD = x_BxNxD + self.proj(o_BxNxD)
      return x_BxNxD + self.fc2(F.gelu(self.fc1(self.norm2(x_BxNxD))))

  class MAE(nn.Module):
    def __init__(self):
      super().__init__()
      grid = image // patch
      self.n = grid * grid
      self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
      self.cls_token = nn.Parameter(torch.zeros(1, 1, width).normal_(std=0.02))
      self.register_buffer("pos", sincos_2d(width, grid), persistent=False)
      self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
      self.norm = nn.LayerNorm(width, eps=1e-6)
      self.decoder_embed = nn.Linear(width, dec_width)
      self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width).normal_(std=0.02))
      self.register_buffer("dec_pos", sincos_2d(dec_width, grid), persistent=False)
      self.decoder_blocks = nn.ModuleList(Block(dec_width, dec_heads) for _ in range(dec_depth))
      self.decoder_norm = nn.LayerNorm(dec_width, eps=1e-6)
      self.decoder_pred = nn.Linear(dec_width, patch * patch * 3)

    def patchify(self, images_Bx3xHxW):
      b, c, h, w = images_Bx3xHxW.shape
      x = images_Bx3xHxW.reshape(b, c, h // patch, patch, w // patch, patch)
      return x.permute(0, 2, 4, 3, 5, 1).reshape(b, self.n, patch * patch * c)

    def forward(self, images_Bx3xHxW):
      b = images_Bx3xHxW.shape[0]
      flip = torch.rand(b, 1, 1, 1, device=images_Bx3xHxW.device) < 0.5
      images_Bx3xHxW = torch.where(flip, images_Bx3xHxW.flip(3), images_Bx3xHxW)
      x_BxNxD = self.patch_embed(images_Bx3xHxW).flatten(2).transpose(1, 2) + self.pos[:, 1:]
      # Random masking (MAE's `random_masking`): keep the patches of the lowest noise.
      keep = int(self.n * (1 - MASK_RATIO))
      noise_BxN = torch.rand(b, self.n, device=x_BxNxD.device)
      ids_shuffle = noise_BxN.argsort(dim=1)
      ids_restore = ids_shuffle.argsort(dim=1)
      ids_keep = ids_shuffle[:, :keep, None]
      x_BxKxD = x_BxNxD.gather(1, ids_keep.expand(-1, -1, width))
      mask_BxN = torch.ones(b, self.n, device=x_BxNxD.device)
      mask_BxN[:, :keep] = 0
      mask_BxN = mask_BxN.gather(1, ids_restore)
      cls = (self.cls_token + self.pos[:, :1]).expand(b, -1, -1)
      x = torch.cat([cls, x_BxKxD], dim=1)
      for blk in self.blocks:
        x = blk(x)
      x = self.decoder_embed(self.norm(x))
      tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, self.n - keep, -1).to(x.dtype)], 1)
      tokens = tokens.gather(1, ids_restore[..., None].expand(-1, -1, dec_width))
      x = torch.cat([x[:, :1], tokens], dim=1) + self.dec_pos
      for blk in self.decoder_blocks:
        x = blk(x)
      pred_BxNxP = self.decoder_pred(self.decoder_norm(x))[:, 1:].float()
      # Normalised-pixel targets: each patch by its own mean and variance.
      target = self.patchify(images_Bx3xHxW)
      mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
      target = (target - mean) / (var + 1e-6) ** 0.5
      per_patch = ((pred_BxNxP - target) ** 2).mean(-1)
      return (per_patch * mask_BxN).sum() / mask_BxN.sum()

  return MAE()


def train_step(torch, device, args, dims: dict, batch: int):
  """`() -> None` running one step (forward, loss, backward, AdamW) on a fixed batch."""
  model = build(torch, **dims).to(device)
  decay = [p for p in model.parameters() if p.ndim > 1]
  rest = [p for p in model.parameters() if p.ndim <= 1]
  groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=device.type == "cuda")
  loss_of = torch.compile(model) if args.compile else model
  images = torch.rand(batch, 3, dims["image"], dims["image"], device=device)

  def step():
    with common.autocast(torch, device, args.dtype):
      loss = loss_of(images)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return step, sum(p.numel() for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
  p = common.parser("benchmarks.peers.mae_vit_b16", __doc__, ("train",), dtype="bfloat16")
  args = common.parse(p, argv)
  torch, device = common.torch_setup(args)
  dims = TINY if args.tiny else PAPER
  batch = args.batch or (4 if args.tiny else 256)
  step, n_params = train_step(torch, device, args, dims, batch)
  timed = common.time_calls(torch, device, step, args.steps, args.warmup)
  meta = {"params": n_params, "image_size": dims["image"], "mask_ratio": MASK_RATIO}
  meta.update(decoder_depth=dims["dec_depth"], optimizer="adamw")
  common.emit([common.row(torch, device, args, CASE, batch, batch, timed, **meta)], args.out)
  return 0


if __name__ == "__main__":
  common.run(main)
