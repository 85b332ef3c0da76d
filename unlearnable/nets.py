"""Building and calling the classifiers this package trains (surrogates, victims, random nets).

A model spec is a ConfigDict `{name: 'small_cnn' | 'resnet18' | 'mlp' | 'vit', **fields}` passed
to `shared.models.get_classifier`; BatchNorm statistics travel as `model_state`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from shared import models as models_lib
from shared.errors import ConfigError


def build(spec, num_classes: int | None):
  """A classifier (or, with num_classes=None, a feature extractor) from a model spec."""
  fields = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  name = fields.pop("name", None)
  if not name:
    raise ConfigError(f"model spec {fields} has no 'name'")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return models_lib.get_classifier(name, num_classes=num_classes, **fields)


def init(model, key: jax.Array, sample_BxHxWxC) -> tuple[Any, dict]:
  """(params, model_state) with model_state the non-param collections (BatchNorm stats)."""
  variables = dict(model.init(key, jnp.asarray(sample_BxHxWxC), train=False))
  params = variables.pop("params")
  return params, variables


def apply_train(model, params, model_state, x, **kwargs):
  """Train-mode call (batch statistics): (output, new_model_state)."""
  if model_state:
    out, new = model.apply(
      {"params": params, **model_state}, x, train=True, mutable=list(model_state), **kwargs
    )
    return out, dict(new)
  return model.apply({"params": params}, x, train=True, **kwargs), model_state


def apply_eval(model, params, model_state, x, **kwargs):
  """Inference-mode call (running statistics)."""
  return model.apply({"params": params, **model_state}, x, train=False, **kwargs)
