"""PyTorch peer of the unlearnable ResNet-18 cases: the victim's training step and EM's PGD step.

    python -m benchmarks.peers.resnet18 --steps 20 --warmup 5 [--compile] --out peers.jsonl

The CIFAR ResNet-18 of the unlearnable-examples literature (kuangliu/pytorch-cifar's layout, as
`shared.models.resnet.ResNet18`: 11,173,962 parameters, checked in tests/test_peers.py): 3x3 stem
without max-pool, BasicBlocks [2, 2, 2, 2] at 64-512, BatchNorm, channels-last on CUDA. Cases
(unlearnable/bench.py's shapes, batch 512 of 32x32x3 images in [0, 1], 10 classes):
  train  `pytorch/resnet18_train`: the victim's step, a random 4-pixel-pad crop and flip on the
         device, cross-entropy, SGD lr 0.1, momentum 0.9, weight decay 5e-4, BatchNorm training.
  pgd    `pytorch/resnet18_pgd`: one EM perturbation step, the gradient of the cross-entropy of
         clip(x + delta) with respect to delta only (BatchNorm on running statistics, as the
         paper config's `em.bn = "running"`), delta <- clip(delta - 0.8/255 sign(g), +-8/255),
         then x + delta kept in [0, 1].
Default dtype bfloat16 autocast (params float32), as the JAX paper config's ResNet. `--compile`
compiles the model; the optimizer and the PGD update run eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.peers import common

CASES = {"train": "pytorch/resnet18_train", "pgd": "pytorch/resnet18_pgd"}
NUM_CLASSES, IMAGE, PAD = 10, 32, 4
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
EPS, STEP_SIZE = 8 / 255, 0.8 / 255


def build(torch, width: int = 64):
  """The CIFAR ResNet-18 as an nn.Module: `model(x_Bx3xHxW) -> logits_Bx10`."""
  nn, F = torch.nn, torch.nn.functional

  class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = nn.Sequential()
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
      h = F.relu(self.bn1(self.conv1(x)))
      return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))

  class ResNet18(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
      layers, cin = [], width
      for stage in range(4):
        cout = width * 2**stage
        for i in range(2):
          layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
          cin = cout
      self.layers = nn.Sequential(*layers)
      self.head = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x):
      h = self.layers(F.relu(self.stem(x)))
      return self.head(h.mean(dim=(2, 3)).float())

  return ResNet18()


def crop_flip(torch, x_Bx3xHxW):
  """A random crop of the 4-pixel zero-padded image and a random horizontal flip, per image."""
  b, _, h, w = x_Bx3xHxW.shape
  padded = torch.nn.functional.pad(x_Bx3xHxW, (PAD, PAD, PAD, PAD))
  dy, dx = (torch.randint(0, 2 * PAD + 1, (b,), device=x_Bx3xHxW.device) for _ in range(2))
  rows = (dy[:, None] + torch.arange(h, device=dy.device))[:, None, :, None]
  cols = (dx[:, None] + torch.arange(w, device=dx.device))[:, None, None, :]
  batch = torch.arange(b, device=dy.device)[:, None, None, None]
  chans = torch.arange(x_Bx3xHxW.shape[1], device=dy.device)[None, :, None, None]
  out = padded[batch, chans, rows, cols]
  flip = torch.rand(b, 1, 1, 1, device=out.device) < 0.5
  return torch.where(flip, out.flip(3), out)


def _data(torch, device, batch: int):
  images = torch.rand(batch, 3, IMAGE, IMAGE, device=device)
  labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  if device.type == "cuda":
    images = images.contiguous(memory_format=torch.channels_last)
  return images, labels


def _model(torch, device, width: int):
  model = build(torch, width).to(device)
  if device.type == "cuda":
    model = model.to(memory_format=torch.channels_last)
  return model


def train_step(torch, device, args, width: int, batch: int):
  """`() -> None` running one victim step (augment, forward, loss, backward, SGD)."""
  model = _model(torch, device, width).train()
  opt = torch.optim.SGD(
    model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True
  )
  forward = torch.compile(model) if args.compile else model
  images, labels = _data(torch, device, batch)

  layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format

  def step():
    x = crop_flip(torch, images).contiguous(memory_format=layout)
    with common.autocast(torch, device, args.dtype):
      logits = forward(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return step, sum(p.numel() for p in model.parameters())


def pgd_step(torch, device, args, width: int, batch: int):
  """`() -> None` running one signed-gradient step on the perturbations of a batch."""
  model = _model(torch, device, width).eval().requires_grad_(False)
  forward = torch.compile(model) if args.compile else model
  images, labels = _data(torch, device, batch)
  state = {"delta": torch.zeros_like(images)}

  def step():
    delta = state["delta"].requires_grad_(True)
    with common.autocast(torch, device, args.dtype):
      logits = forward((images + delta).clamp(0, 1))
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    (grad,) = torch.autograd.grad(loss, delta)
    with torch.no_grad():
      d = (delta - STEP_SIZE * grad.sign()).clamp(-EPS, EPS)
      state["delta"] = (images + d).clamp(0, 1) - images

  return step, sum(p.numel() for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
  p = common.parser("benchmarks.peers.resnet18", __doc__, tuple(CASES), dtype="bfloat16")
  args = common.parse(p, argv)
  torch, device = common.torch_setup(args)
  width = 8 if args.tiny else 64
  rows = []
  for what in args.what:
    batch = args.batch or (4 if args.tiny else 512)
    build_step = train_step if what == "train" else pgd_step
    step, n_params = build_step(torch, device, args, width, batch)
    timed = common.time_calls(torch, device, step, args.steps, args.warmup)
    meta = {"params": n_params, "image_size": IMAGE, "width": width}
    if what == "train":
      meta.update(optimizer="sgd", augment="crop_flip")
    rows.append(common.row(torch, device, args, CASES[what], batch, batch, timed, **meta))
  common.emit(rows, args.out)
  return 0


if __name__ == "__main__":
  common.run(main)
