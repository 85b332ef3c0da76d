"""Unlearnable examples that transfer across learners: generators, victims, protocol.

    delta = unlearnable.generate(config, images, labels, key)   # ||delta||_inf <= config.eps
    protected = unlearnable.protect(images_uint8, labels, method="em", eps=8 / 255)  # uint8
    unlearnable.save_protected("protected.npz", protected, labels); unlearnable.load_protected(...)

Methods (`unlearnable.METHODS`): clean, random, lsp, ar, ops, em, em_class, tue, dist.
The CSD and class-MMD separability scores are in `unlearnable.csd`.
"""

from unlearnable.perturb import METHODS, generate, generate_with_info, load, save
from unlearnable.release import load_protected, protect, quantize, save_protected

__all__ = [
  "METHODS",
  "generate",
  "generate_with_info",
  "load",
  "load_protected",
  "protect",
  "quantize",
  "save",
  "save_protected",
]
