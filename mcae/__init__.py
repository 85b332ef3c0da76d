"""MCAE: masked contrastive autoencoder pre-training of a ViT for cross-domain face anti-spoofing.

Zheng, "MCAE: Masked Contrastive Autoencoder for Face Anti-Spoofing", arXiv 2302.08674 (2023).
Pre-training loss = MAE (He et al. 2022) + lambda * SupCon (Khosla et al. 2020) on a projection
of the encoder's pooled visible tokens; then fine-tuning with a live/spoof head; evaluation on a
held-out domain (leave-one-domain-out). See docs/mcae.md.

  python -m mcae --config configs/mcae.py[:tiny|compare|ablations|paper] --workdir runs/mcae
"""
