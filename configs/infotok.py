"""InfoTok: an information-bottleneck-regularised shared visual tokenizer in three unified styles.

  python -m infotok --config configs/infotok.py --workdir runs/infotok            # default
  python -m infotok --config configs/infotok.py:tiny --workdir /tmp/infotok_tiny  # seconds
  python -m infotok --config configs/infotok.py:compare --workdir runs/infotok_compare
  python -m infotok --config configs/infotok.py:paper --workdir runs/infotok_paper

Variants:
  default  all three styles (ar, masked, semantic) x {baseline, entropy-loss baseline,
           InfoTok-VIB, InfoTok-HSIC} on `shapes` at 48 px (3x3 tokens, one per grid cell), one
           seed, sized for 2 CPU cores (see docs/results.md for the measured wall time).
  tiny     the whole factorial of tokenizer objectives (`variants`: + rate_matched, vib_kl,
           vib_nce) on a few hundred examples and a few steps (tests).
  compare  the whole factorial with 3 seeds (`seeds`, each in `seed_<s>/`) and a larger budget
           (GPU).
  paper    the pipeline at 256 px with ViT-B-size unified models on an image-caption TFDS set
           (coco_captions, prepared beforehand in `data.data_dir`; a local pretrained text
           tokenizer, GPT-2's by default), judged by a retrieval model (infotok/captions.py).
Option `captions=true` puts any variant on the image-caption set: `configs/infotok.py:tiny,
captions=true` is a smoke test of a COCO download in about a minute. Option `bed=cifar_grid` puts
it on the natural-image bed (`shared.data.cifar_grid`: real CIFAR-10 photographs in a 2x2 grid at
64 px, judged per cell by the shipped CIFAR-10 classifier; cifar10 must be prepared).
Every unknown of the paper is a field here; docs/infotok.md lists them with the chosen values.
"""

import ml_collections

from infotok import beds
from shared import config_utils

VARIANTS = ("tiny", "compare", "paper")


def get_config(arg=None):
  args = config_utils.parse_arg(arg, variants=VARIANTS, captions=False, bed="shapes")
  v = args.variant
  tiny, compare, paper = v == "tiny", v == "compare", v == "paper"
  captions = paper or args.captions  # an image-caption TFDS set instead of `shapes`
  if args.bed not in beds.BEDS:  # the bed registry's names (cheap: no JAX at import)
    raise config_utils.ConfigError(f"bed={args.bed!r}; known: {', '.join(beds.BEDS)}")
  grid_bed = args.bed == "cifar_grid" and not captions  # real CIFAR-10 photographs in a 2x2 grid
  on_captions = lambda shapes_value, caption_value: caption_value if captions else shapes_value
  pick = lambda default, t=None, c=None, p=None: (
    t
    if tiny and t is not None
    else c
    if compare and c is not None
    else p
    if paper and p is not None
    else default
  )

  cfg = ml_collections.ConfigDict()
  cfg.method = "infotok"
  cfg.variant = v
  cfg.seed = 0  # the judge's seed; the runs use `seeds`
  cfg.seeds = pick((0,), c=(0, 1, 2))
  # The tokenizer objectives (infotok/tokenizer_sweep.py); the default runs four of them to fit
  # 2 CPU cores, the others the whole factorial.
  factorial = (
    "baseline",
    "rate_matched",
    "entropy",
    "vib_kl",
    "vib_nce",
    "infotok_vib",
    "infotok_hsic",
  )
  cfg.variants = pick(
    ("baseline", "entropy", "infotok_vib", "infotok_hsic"), factorial, factorial, factorial
  )

  cfg.data = ml_collections.ConfigDict(
    dict(
      name=on_captions("shapes", "tfds:coco_captions"),
      data_dir="",
      # image-caption sets: the TFDS split of each of ours, the caption feature (flattened)
      tfds_splits=dict(train="train", val="val", test="test"),
      caption_feature="captions/text",
      resolution=pick(48, p=256),
      grid=3,
      min_objects=1,
      max_objects=2,
      nuisance=1.0,  # background texture, colour jitter, pixel noise: what IB should drop
      seed=0,
      num_train=pick(20_000, t=512, p=40_000),  # 0 = the whole split (COCO: 82,783, 65 GB f32)
      num_val=pick(2_000, t=128),
      num_test=pick(2_000, t=128, p=5_000),
      num_heldout=pick(2_000, t=128),
    )
  )
  cfg.text = ml_collections.ConfigDict(
    dict(
      tokenizer=pick("word_level", p="gpt2"),  # or any local transformers tokenizer dir / name
      caption_len=pick(20, p=32),  # image-caption sets: longer captions are cut
      captions_per_image=5,  # image-caption sets: training draws one of these per image and step
      min_count=5,  # word_level on image-caption sets: words seen this often in training captions
      vocab_size=0,  # ... and at most this many (0: no limit)
      question_len=12,
      answer_len=4,
    )
  )
  cfg.judge = ml_collections.ConfigDict(
    dict(
      inputs=("clean", "image"),  # real renders only, never reconstructions or generations
      num_scenes=pick(20_000, t=512),  # fresh renders over all combinations (0 = the train split)
      steps=pick(700, t=30, p=5_000),
      batch_size=256,
      object_fraction=0.6,
      lr=2e-3,
      widths=on_captions((16, 32, 64), pick((16, 32, 64), p=(32, 64, 128, 256))),
      hidden=on_captions(128, pick(64, p=256)),
      # shapes: attribute accuracy on real test renders; image-caption sets: R-precision among
      # `group` (chance 1/32; 0.3 is our choice of "clearly better than chance")
      min_accuracy=on_captions(0.95, 0.3),
      group=32,  # image-caption sets: R-precision candidates
    )
  )
  cfg.tokenizer = ml_collections.ConfigDict(
    dict(
      target="image",  # reconstruct the nuisance-laden input ('clean' = denoising)
      widths=pick((64,), p=(128, 256, 256, 512)),
      patch_size=pick(16, p=2),
      patch_hidden=pick(256, p=0),
      blocks_per_stage=pick(0, p=1),
      latent_blocks=pick(1, p=2),
      quantizer="fsq",  # vq | fsq | continuous (the last only for tokenizer studies)
      fsq_levels=pick((8, 5, 5, 5), p=(8, 8, 8, 5, 5, 5)),
      codebook_size=pick(512, p=16_384),  # vq
      code_dim=8,  # vq
      commitment=0.25,  # vq, VQ-VAE's beta
      normalize_codes=True,  # vq, cosine lookup (ViT-VQGAN)
      revive_dead_codes=True,  # vq
      revive_threshold=0.01,
      usage_decay=0.99,
      entropy_temperature=0.01,  # MaskGIT's
      compute_dtype="float32",  # or bfloat16 (accelerators): encoder / decoder compute; params f32
      embed_dim=64,
      num_steps=pick(1_500, t=40, c=5_000, p=100_000),
      batch_size=pick(32, c=64, p=256),
      optimizer=config_utils.optimizer_config(lr=2e-3, warmup_steps=pick(60, t=5), grad_clip=1.0),
      checkpoint_every=pick(1_000, t=20, p=5_000),
      log_every=pick(100, t=10, p=500),
    )
  )
  # The regularisers. Betas are swept and chosen on the validation split (select.*).
  # MaskGIT's entropy_loss_ratio is 0.1 next to losses of order 1; here the reconstruction MSE is
  # ~5e-3 and the entropy loss ~-log K, so the weight is scaled down to keep the ratio sane.
  # Each variant takes one value of its list, chosen on validation (tokenizer_sweep.choose).
  cfg.entropy = ml_collections.ConfigDict(
    dict(weights=pick((3e-4, 1e-3), t=(1e-3,), c=(1e-4, 3e-4, 1e-3, 3e-3)))
  )
  cfg.vib = ml_collections.ConfigDict(
    dict(
      betas=pick((1e-3, 3e-3, 1e-2), t=(1e-3,), c=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
      consistency=1e-3,  # lambda of the I_NCE(Z; Y) term of InfoTok-VIB (fixed)
      consistency_weights=pick((1e-3, 1e-2), t=(1e-3,), c=(1e-4, 1e-3, 1e-2)),  # vib_nce's sweep
    )
  )
  cfg.hsic = ml_collections.ConfigDict(
    dict(beta_x=pick((0.03, 0.1, 0.3), t=(0.1,), c=(0.01, 0.03, 0.1, 0.3)), lambda_y=0.1)
  )
  cfg.semantic = ml_collections.ConfigDict(dict(align_weight=3e-3))  # VILA-U/UniTok contrastive
  cfg.select = ml_collections.ConfigDict(dict(tolerance=0.02))  # of val relevance vs baseline

  cfg.unified = ml_collections.ConfigDict(
    dict(
      styles=("ar", "masked", "semantic"),
      width=pick(64, t=32, c=128, p=768),
      depth=pick(2, t=1, c=4, p=12),
      num_heads=pick(4, t=2, c=4, p=12),
      mlp_ratio=4.0,
      dropout=0.0,
      compute_dtype="float32",  # or bfloat16 (accelerators); params and logits stay float32
      num_steps=pick(800, t=30, c=4_000, p=100_000),
      batch_size=pick(32, c=64, p=256),
      task_fractions=on_captions((0.5, 0.25, 0.25), (0.5, 0.5, 0.0)),  # t2i, i2t, vqa rows
      optimizer=config_utils.optimizer_config(lr=3e-3, warmup_steps=pick(60, t=5), grad_clip=1.0),
      temperature=1.0,
      top_k=0,
      kv_cache=True,  # AR decoding with cached keys / values (False: full recompute per token)
      masked_steps=pick(6, p=12),  # MaskGIT iterative decoding steps (<= image tokens)
      choice_temperature=4.5,  # MaskGIT's
      eval_batch_size=pick(250, t=64),
      checkpoint_every=pick(1_000, t=20, p=5_000),
      log_every=pick(100, t=10, p=500),
    )
  )
  cfg.eval = ml_collections.ConfigDict(
    dict(
      num_examples=pick(500, t=64, c=1_000),  # per split (test, heldout) for unified models
      num_recon=pick(500, t=128, c=2_000),  # per split for tokenizers
      grid_samples=8,
    )
  )
  # The cifar_grid bed's judge: the shipped CIFAR-10 classifier per cell (shared.judge, trained on
  # real CIFAR-10 images only; not trained by the run) and the cell-empty threshold (mean absolute
  # difference from the background grey, [0, 1] units).
  cfg.judge.path = "shared/assets/cifar10_judge"
  cfg.judge.empty_threshold = 0.05
  if grid_bed:  # `bed=cifar_grid`: 64 px scenes of 2x2 cells, 1-2 real CIFAR-10 photographs
    cfg.data.name = "cifar_grid"
    cfg.data.resolution = 64
    cfg.data.grid = 2
    cfg.tokenizer.patch_size = 8  # 8x8 tokens, 4x4 per photograph
    cfg.judge.min_accuracy = 0.90  # per-cell class accuracy on real test scenes (issue 17)
  cfg.run = config_utils.run_config(progress=False)
  return cfg
