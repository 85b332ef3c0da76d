"""Unlearnable examples that transfer across learners: generators, victims, protocol.

    delta = unlearnable.generate(config, images, labels, key)   # ||delta||_inf <= config.eps
    protected = unlearnable.protect(images_uint8, labels, method="em", eps=8 / 255)  # uint8
    unlearnable.save_protected("protected.npz", protected, labels); unlearnable.load_protected(...)
    out = unlearnable.evaluate_victim(protected, labels, test_uint8, test_labels,
                                      victim="supervised", epochs=10)   # out["final"]: accuracy

Shapes: images [N, H, W, C] (or [N, H, W]) uint8, labels [N] ints; `protect` returns the same
shape and dtype; `evaluate_victim` returns the victim's clean-test accuracy (final, peak, curve).
Methods (`unlearnable.METHODS`): clean, random, lsp, ar, ops, em, em_class, tue, dist.
Victims (`unlearnable.VICTIMS`): supervised, supervised_other, simclr, grayscale, jpeg, jpeg_mild,
adversarial, mixup, cutout (+ datawise in the CLI). The CSD and class-MMD separability scores are
in `unlearnable.csd`.
"""

from unlearnable.evaluate import VICTIMS, evaluate_victim
from unlearnable.perturb import METHODS, generate, generate_with_info, load, save
from unlearnable.release import load_protected, protect, quantize, save_protected

__all__ = [
  "METHODS",
  "VICTIMS",
  "evaluate_victim",
  "generate",
  "generate_with_info",
  "load",
  "load_protected",
  "protect",
  "quantize",
  "save",
  "save_protected",
]
