"""Unlearnable examples that transfer across learners: generators, victims, protocol.

    delta = unlearnable.generate(config, images, labels, key)   # ||delta||_inf <= config.eps

Methods (`unlearnable.METHODS`): clean, random, lsp, ar, ops, em, em_class, tue, dist.
The CSD and class-MMD separability scores are in `unlearnable.csd`.
"""

from unlearnable.perturb import METHODS, generate, generate_with_info, load, save

__all__ = ["METHODS", "generate", "generate_with_info", "load", "save"]
