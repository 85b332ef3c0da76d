"""Image classifiers for small images: CIFAR ResNet-18, CIFAR VGG-16, a small CNN and an MLP.

ResNet-18 follows He et al. 2016 (arXiv 1512.03385) in the CIFAR layout the unlearnable-examples
literature trains (kuangliu/pytorch-cifar `models/resnet.py`, used by Huang et al. 2021 and TUE):
3x3 stem with stride 1 and no max-pool, BasicBlocks [2, 2, 2, 2] at widths 64, 128, 256, 512,
BatchNorm (PyTorch's momentum 0.1 = Flax's 0.9, eps 1e-5), global average pool, linear head.

All models take NHWC float images of any size and channel count and `train: bool` (batch statistics
and dropout); they return float32 logits, or the penultimate features when `num_classes` is None
(e.g. as a SimCLR backbone). With BatchNorm, `apply` needs `mutable=["batch_stats"]` when training.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from shared.errors import ConfigError

Dtype = Any

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # Kaiming, as torchvision


def _head(module, features_BxF):
  """`module`'s linear `head` on pooled features (float32 logits), or the features themselves
  when its num_classes is None (a backbone)."""
  if module.num_classes is None:
    return features_BxF
  dtypes = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  return nn.Dense(module.num_classes, name="head", **dtypes)(features_BxF).astype(jnp.float32)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    conv = lambda k, s, name: nn.Conv(
      self.features,
      (k, k),
      strides=(s, s),
      padding=((k // 2, k // 2), (k // 2, k // 2)),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_conv_init,
      name=name,
    )
    norm = lambda name: nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    h_BxHxWxF = nn.relu(norm("bn1")(conv(3, self.strides, "conv1")(x_BxHxWxC)))
    h_BxHxWxF = norm("bn2")(conv(3, 1, "conv2")(h_BxHxWxF))
    shortcut_BxHxWxF = x_BxHxWxC
    if self.strides != 1 or x_BxHxWxC.shape[-1] != self.features:
      shortcut_BxHxWxF = norm("shortcut_bn")(conv(1, self.strides, "shortcut_conv")(x_BxHxWxC))
    return nn.relu(h_BxHxWxF + shortcut_BxHxWxF)


class ResNet(nn.Module):
  """CIFAR-style ResNet (BasicBlocks). `ResNet18` fixes stage_sizes = (2, 2, 2, 2).

  Attributes:
    num_classes: head outputs; None returns the pooled features_BxF.
    stage_sizes: blocks per stage.
    width: channels of the first stage (64 for the standard net); stages use width * 1, 2, 4, 8.
      Smaller widths (e.g. 16) give fast CPU runs.
    dtype: compute dtype; params f32.
  """

  num_classes: int | None = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    if self.width < 1:
      raise ConfigError(f"ResNet width must be positive, got {self.width}")
    x_BxHxWxF = nn.Conv(
      self.width,
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_conv_init,
      name="stem_conv",
    )(images_BxHxWxC.astype(self.dtype))
    x_BxHxWxF = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_bn",
    )(x_BxHxWxF)
    x_BxHxWxF = nn.relu(x_BxHxWxF)
    for stage, n_blocks in enumerate(self.stage_sizes):
      for i in range(n_blocks):
        x_BxHxWxF = BasicBlock(
          self.width * 2**stage,
          strides=2 if stage > 0 and i == 0 else 1,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"stage{stage + 1}_block{i + 1}",
        )(x_BxHxWxF, train)
    return _head(self, x_BxHxWxF.astype(jnp.float32).mean(axis=(1, 2)))


class ResNet18(ResNet):
  """CIFAR ResNet-18: 11,173,962 params for 10 classes at width 64."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNetClassifier(nn.Module):
  """A CIFAR ResNet that standardises its inputs: `features` gives the pooled penultimate layer,
  `__call__` the float32 logits. The frozen-judge form (`shared.judge`, `shared.fd`): mean and
  std are per channel, of the training set, so the saved network takes raw [0, 1] images.
  """

  num_classes: int = 10
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  input_mean: Sequence[float] = (0.0, 0.0, 0.0)
  input_std: Sequence[float] = (1.0, 1.0, 1.0)
  dtype: Dtype = jnp.float32

  def setup(self):
    self.backbone = ResNet(
      num_classes=None, stage_sizes=self.stage_sizes, width=self.width, dtype=self.dtype
    )
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def features(self, images_BxHxWxC, train: bool = False):
    mean = jnp.asarray(self.input_mean, jnp.float32)
    std = jnp.asarray(self.input_std, jnp.float32)
    return self.backbone((images_BxHxWxC - mean) / std, train)

  def __call__(self, images_BxHxWxC, train: bool = False):
    return self.head(self.features(images_BxHxWxC, train)).astype(jnp.float32)


def _conv_bn_relu(module, x_BxHxWxC, features: int, i: int, train: bool, *, use_bias: bool):
  """conv3x3 (SAME) -> BatchNorm -> ReLU as submodules `conv{i}`, `bn{i}` of `module` (called
  inside its compact __call__), in its dtype / param_dtype."""
  x_BxHxWxF = nn.Conv(
    features,
    (3, 3),
    padding="SAME",
    use_bias=use_bias,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    kernel_init=_conv_init,
    name=f"conv{i}",
  )(x_BxHxWxC)
  x_BxHxWxF = nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    name=f"bn{i}",
  )(x_BxHxWxF)
  return nn.relu(x_BxHxWxF)


class SmallCNN(nn.Module):
  """A small VGG-like CNN: per stage conv3x3-BN-ReLU then 2x2 max-pool; global pool; MLP head.

  A second, different architecture for transfer experiments (victim != surrogate).
  """

  num_classes: int | None = 10
  widths: Sequence[int] = (32, 64, 128)
  hidden: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    x_BxHxWxF = images_BxHxWxC.astype(self.dtype)
    for i, features in enumerate(self.widths):
      x_BxHxWxF = _conv_bn_relu(self, x_BxHxWxF, features, i + 1, train, use_bias=False)
      if min(x_BxHxWxF.shape[1:3]) >= 2:  # tiny inputs (8x8 digits) stop shrinking at 1x1
        x_BxHxWxF = nn.max_pool(x_BxHxWxF, (2, 2), strides=(2, 2))
    features_BxF = x_BxHxWxF.mean(axis=(1, 2))
    features_BxF = nn.relu(
      nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(features_BxF)
    ).astype(jnp.float32)
    return _head(self, features_BxF)


VGG16_LAYERS = (
  *(64, 64, "M", 128, 128, "M"),
  *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
)


class VGG(nn.Module):
  """VGG with BatchNorm in the CIFAR layout (Simonyan & Zisserman 2015, arXiv 1409.1556, as the
  unlearnable-examples papers train it: kuangliu/pytorch-cifar `models/vgg.py`): 3x3 conv (with
  bias) - BN - ReLU per entry of `layers`, 2x2 max-pool at each "M", one linear head on the
  pooled features. At width 64 and 32x32 inputs VGG-16 has 14,728,266 params for 10 classes.

  Attributes:
    num_classes: head outputs; None returns the pooled features_BxF.
    layers: conv widths at width 64, "M" for a max-pool (VGG16_LAYERS).
    width: channels of the first conv (64 for the standard net); every conv scales with it.
  """

  num_classes: int | None = 10
  layers: Sequence[Any] = VGG16_LAYERS
  width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    if self.width < 1:
      raise ConfigError(f"VGG width must be positive, got {self.width}")
    x_BxHxWxF = images_BxHxWxC.astype(self.dtype)
    i = 0
    for entry in self.layers:
      if entry == "M":
        if min(x_BxHxWxF.shape[1:3]) >= 2:  # small inputs stop shrinking at 1x1
          x_BxHxWxF = nn.max_pool(x_BxHxWxF, (2, 2), strides=(2, 2))
        continue
      i += 1
      features = max(1, int(entry) * self.width // 64)
      x_BxHxWxF = _conv_bn_relu(self, x_BxHxWxF, features, i, train, use_bias=True)
    return _head(self, x_BxHxWxF.astype(jnp.float32).mean(axis=(1, 2)))


class VGG16(VGG):
  """CIFAR VGG-16 (BatchNorm): 14,728,266 params for 10 classes at width 64."""

  layers: Sequence[Any] = VGG16_LAYERS


class MLP(nn.Module):
  """Flatten the image, ReLU hidden layers (optional dropout), linear head."""

  num_classes: int | None = 10
  hidden: Sequence[int] = (512, 512)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    x_BxF = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1).astype(self.dtype)
    for i, features in enumerate(self.hidden):
      x_BxF = nn.relu(
        nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i + 1}")(x_BxF)
      )
      x_BxF = nn.Dropout(self.dropout_rate)(x_BxF, deterministic=not train)
    if self.num_classes is None:
      return x_BxF.astype(jnp.float32)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(
      x_BxF
    ).astype(jnp.float32)
