"""Models shared by the methods: ViT / MAE, CIFAR ResNet-18 / VGG-16, small classifiers, an LM."""

from shared.errors import ConfigError
from shared.models.resnet import MLP, VGG, VGG16, ResNet, ResNet18, SmallCNN
from shared.models.transformer import (
  TransformerLM,
  causal_mask,
  padding_mask,
  prefix_causal_mask,
  span_bidirectional_mask,
)
from shared.models.vit import (
  MAE,
  VIT_SIZES,
  ViTClassifier,
  ViTEncoder,
  init_classifier_from_mae,
  mae_loss,
  patchify,
  sincos_2d,
  unpatchify,
)

# Image classifiers by config name (explicit registry, no string imports). Each takes
# `num_classes=` plus its own fields, and is called as `model.apply(variables, images, train)`.
CLASSIFIERS = {
  "resnet18": ResNet18,
  "vgg16": VGG16,
  "small_cnn": SmallCNN,
  "mlp": MLP,
  "vit": ViTClassifier,
}


def get_classifier(name: str, **kwargs):
  """An image classifier by registry name; unknown names are a ConfigError."""
  if name not in CLASSIFIERS:
    raise ConfigError(f"unknown model {name!r}; known: {', '.join(CLASSIFIERS)}")
  try:
    return CLASSIFIERS[name](**kwargs)
  except TypeError as e:  # an unknown or missing field
    raise ConfigError(f"bad arguments for model {name!r}: {e}") from None


__all__ = [
  "CLASSIFIERS",
  "MAE",
  "MLP",
  "VIT_SIZES",
  "ResNet",
  "ResNet18",
  "SmallCNN",
  "TransformerLM",
  "VGG",
  "VGG16",
  "ViTClassifier",
  "ViTEncoder",
  "causal_mask",
  "get_classifier",
  "init_classifier_from_mae",
  "mae_loss",
  "padding_mask",
  "patchify",
  "prefix_causal_mask",
  "sincos_2d",
  "span_bidirectional_mask",
  "unpatchify",
]
