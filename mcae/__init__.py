"""MCAE: masked contrastive autoencoder pre-training of a ViT for cross-domain face anti-spoofing.

Zheng, "MCAE: Masked Contrastive Autoencoder for Face Anti-Spoofing", arXiv 2302.08674 (2023).
Pre-training loss = MAE (He et al. 2022) + lambda * SupCon (Khosla et al. 2020) on a projection
of the encoder's pooled visible tokens; then fine-tuning with a live/spoof head; evaluation on a
held-out domain (leave-one-domain-out). See docs/mcae.md.

  python -m mcae --config configs/mcae.py[:tiny|compare|ablations|paper] --workdir runs/mcae

The Python API, on arrays (images uint8 [N, H, W, C], labels 1 = live, domain ids; no workdir):

  from configs.mcae import get_config
  from shared.metrics import fas_metrics
  import mcae

  cfg = get_config("tiny")
  encoder = mcae.pretrain(images, labels, domains, config=cfg, key=0)  # MAE + lambda * SupCon
  # cfg.pretrain.supcon_weight = 0.0 (or method="mae_ft"): MAE alone
  clf = mcae.finetune(encoder, images, labels, val=(val_images, val_labels), config=cfg)
  scratch = mcae.finetune(None, images, labels, val=(val_images, val_labels), config=cfg)
  scores = mcae.score(clf, test_images)  # float64 [N], logit_live - logit_spoof
  fas_metrics(scores, test_labels)       # {"hter", "eer", "auc", "tpr_at_fpr_1pct", "threshold"}

  mcae.save_encoder("exports/mcae_encoder", encoder)  # encoder.safetensors + encoder.json
  encoder = mcae.load_encoder("exports/mcae_encoder")
  mcae.features(encoder, images)                      # frozen pooled features [N, D]

`key=s` (an int) reproduces the CLI's sub-run of seed s with the same config.

The pre-training model and loss are in `mcae.pretrain_loss`, the classifiers (ViT, ResNet-18)
and their fine-tuning loss in `mcae.classifiers`, the training loops in `mcae.fit`.
"""

from mcae.api import Classifier, Encoder, features, finetune, pretrain, score
from mcae.export import load_encoder, save_encoder

__all__ = [
  "Classifier",
  "Encoder",
  "features",
  "finetune",
  "load_encoder",
  "pretrain",
  "save_encoder",
  "score",
]
