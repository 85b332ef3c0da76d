"""Gradient-flow iterative pruning of a DDPM U-Net vs one-shot (Diff-Pruning) baselines.

  python -m gradflow_prune --config configs/gradflow_prune.py --workdir runs/gradflow_prune
  python -m gradflow_prune --config configs/gradflow_prune.py:tiny --workdir /tmp/gp_tiny
  python -m gradflow_prune --config configs/gradflow_prune.py:compare --workdir runs/gp_compare
  python -m gradflow_prune --config configs/gradflow_prune.py:paper \
      --config.teacher.weights=ddpm_ema_cifar10.pth --workdir runs/gp_paper
  # the default variant's teacher, alone (resumable; the lead ships it in gradflow_prune/assets/):
  python -m gradflow_prune --config configs/gradflow_prune.py --config.stage=pretrain \
      --workdir runs/gp_teacher

Variants:
  tiny     seconds: an 8x8 U-Net on `digits`, its teacher pre-trained in the run, a few steps.
  default  the shipped mnist5k 32x32 teacher (627K params), every criterion x procedure pruned
           to ~50% MACs with the same 60 training steps each (2 CPU cores).
  compare  the same on a GPU (iterative with taylor and grasp only), + the iterative ablations
           (lam0, gamma0, k1): 3 seeds, keep 0.7 and 0.5, 2,000 training steps with EMA 0.999,
           2,048 samples with DDIM-50 for FD at fine-tune steps 0, 250, 500, 1000, (2000).
  paper    CIFAR-10 (built in) from a supplied google/ddpm-cifar10-32 state dict, Diff-Pruning's
           ratios (keep 0.7 and 0.5), 100K fine-tuning steps, DDIM 100 quad.
  cifar    CIFAR-10 on one GPU (issue 16): the DDPM CIFAR-10 U-Net at base width 64 (16 GroupNorm
           groups: 4 channels each, as the original's 128 / 32), its teacher pre-trained here
           (`--config.stage=pretrain`, DDPM's recipe), then the paired comparison: one-shot random /
           magnitude / Taylor / GraSP, iterative Taylor and gradient-flow, the ablations, 3 seeds,
           keep 0.7 and 0.5, EMA fine-tuning, FD + SSIM at fine-tune steps 0..2000 (10,000
           DDIM-100 samples, statistics of the test split).

Old behaviour of the iterative flow (before issue 16), for reproduction:
  --config.prune.rank_within=unit --config.prune.normalize=all --config.prune.score_dtype=run
  --config.prune.grasp_protocol=random_t
"""

import ml_collections

from shared import config_utils

VARIANTS = ("tiny", "compare", "paper", "cifar")


def get_config(arg=None):
  args = config_utils.parse_arg(arg, variants=VARIANTS)
  v = args.variant
  tiny, compare, paper, cifar = v == "tiny", v == "compare", v == "paper", v == "cifar"
  gpu = compare or paper or cifar
  cfg = ml_collections.ConfigDict()
  cfg.method = "gradflow_prune"
  cfg.variant = v
  cfg.seed = 0  # data order, init, eval noise
  # One pruning run per seed per arm; a seed fixes the scoring batches, the data order and the
  # training noise of every arm alike (paired), the evaluation noise is eval.seed's for all.
  cfg.seeds = (0, 1, 2) if (compare or cifar) else (0,)
  cfg.stage = "all"  # all | pretrain (only pre-train and export the teacher)

  cfg.data = ml_collections.ConfigDict(
    dict(
      name="digits" if tiny else "cifar10" if (paper or cifar) else "mnist5k",
      data_dir="",
      image_size=0 if (tiny or paper or cifar) else 32,  # mnist5k 28x28 zero-padded to 32x32
      # Input pipeline of the training stages (shared/data/pipeline.py): 'memory' | 'grain'
      # (streamed from stream_source, or from the loaded split written once to ArrayRecord).
      pipeline="memory",
      stream_source="",
      worker_count=0,
    )
  )

  # The U-Net (shared/models/unet.py). Default: ch 24, (1, 2, 2), one ResBlock per level,
  # attention at 16x16, 8 GroupNorm groups: 627K params, 163M MACs; GroupNorm units of 3
  # channels, so keep ratio 0.7 keeps 2 of every 3: 48% of the MACs.
  # cifar: the same at ch 64 with 16 groups (9.0M params).
  cfg.model = ml_collections.ConfigDict(
    dict(
      ch=8 if tiny else 128 if paper else 64 if cifar else 24,
      ch_mult=(1, 2) if tiny else (1, 2, 2, 2) if (paper or cifar) else (1, 2, 2),
      num_res_blocks=2 if (paper or cifar) else 1,
      attn_resolutions=(4,) if tiny else (16,),
      dropout=0.0 if tiny else 0.1,
      num_groups=2 if tiny else 32 if paper else 16 if cifar else 8,
    )
  )
  cfg.diffusion = ml_collections.ConfigDict(
    dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
  )

  cfg.teacher = ml_collections.ConfigDict(
    dict(
      # A folder written by the pretrain stage (unet_config.json, params.npz, teacher.json);
      # relative paths are taken from the repository root. Missing -> pre-trained in the run.
      dir="" if (tiny or paper) else "gradflow_prune/assets/mnist32_teacher",
      weights="",  # a diffusers UNet2DModel state dict (.pth/.bin/.npz/.safetensors); wins
    )
  )
  # The teacher's quality gate (gate.py): no verdict from a run whose teacher misses it. FD at most
  # a tenth of a random-init U-Net's (same architecture, noise and sampler); with the fixed judge
  # (cifar), its mean confidence on the samples >= 0.7 and every class >= half its uniform share.
  cfg.teacher_gate = ml_collections.ConfigDict(
    dict(
      max_fd_fraction=0.1,
      min_judge_confidence=0.7 if cifar else 0.0,
      min_class_share=0.05 if cifar else 0.0,
    )
  )
  # Teacher pre-training (only when no teacher is supplied). paper = DDPM's CIFAR-10 recipe
  # (800K steps, lr 2e-4, warmup 5000, clip 1, EMA 0.9999); default = the mnist5k teacher.
  # cifar: DDPM's recipe for a GPU budget (lr 2e-4, warmup 5000, clip 1, EMA 0.9999), 100K steps.
  cfg.pretrain = ml_collections.ConfigDict(
    dict(
      steps=60 if tiny else 800_000 if paper else 100_000 if cifar else 20_000,
      batch_size=32 if tiny else 128,
      optimizer=config_utils.optimizer_config(
        lr=2e-3 if tiny else 2e-4 if (paper or cifar) else 5e-4,
        warmup_steps=0 if tiny else 5000 if (paper or cifar) else 500,
        schedule="constant",
        grad_clip=1.0,
        ema_decay=0.0 if tiny else 0.9999 if (paper or cifar) else 0.9995,
      ),
    )
  )

  cfg.prune = ml_collections.ConfigDict(
    dict(
      # Arms: one-shot x `criteria`, iterative x `iterative_criteria` (issue 16's design: the
      # four one-shot baselines, iterative Taylor and iterative gradient-flow = grasp).
      criteria=("random", "magnitude", "taylor", "grasp"),
      iterative_criteria=("taylor", "grasp") if gpu else ("random", "magnitude", "taylor", "grasp"),
      procedures=("oneshot", "iterative"),
      # Iterative-procedure ablations, run for `ablation_criteria`: lam0 (no criterion term in
      # the flow), gamma0 (hard cut instead of soft decay), k1 (a single iteration).
      ablations=("lam0", "gamma0", "k1") if (tiny or compare or cifar) else (),
      ablation_criteria=("grasp",),
      # Fractions of channels kept, one set of runs each: Diff-Pruning's ratios 0.3 / 0.5 are
      # keep 0.7 / 0.5, rounded per GroupNorm unit (surgery.py).
      keep_ratios=(0.7, 0.5) if gpu else (0.7,),
      total_steps=30 if tiny else 2000 if (compare or cifar) else 100_000 if paper else 60,
      # "total": every arm trains total_steps in all (iterative: K x n_train interleaved, the rest
      # fine-tuning; equal compute). "finetune": every arm fine-tunes total_steps after its mask
      # is hard (iterative's interleaved steps come on top; equal fine-tuning curves).
      budget="total",
      batch_size=16 if tiny else 128 if gpu else 32,
      optimizer=config_utils.optimizer_config(
        lr=1e-3 if tiny else 2e-4 if (paper or cifar) else 5e-4,
        schedule="constant",
        grad_clip=1.0,
        # EMA of the fine-tuned weights (evaluated when > 0); 0.999 = a 1,000-step horizon.
        ema_decay=0.9 if tiny else 0.9999 if paper else 0.999 if (compare or cifar) else 0.0,
      ),
      # Fine-tune steps at which FD and SSIM are measured (results.json `convergence`); steps past
      # a run's fine-tuning are left out, its last step is always in.
      convergence_steps=(0, 10) if tiny else (0, 250, 500, 1000, 2000) if gpu else (0,),
      # Scoring batch (fixed noise) for taylor / grasp, and the taylor timestep sweep.
      score_batch_size=16 if tiny else 128 if (paper or cifar) else 32,
      taylor_thr=0.05,
      taylor_stride=1 if paper else 100 if tiny else 10 if cifar else 40,  # t = 0, stride, ...
      # "sweep": grasp scores the loss taylor scores (same batch, noise, timesteps and stop);
      # "random_t" (before issue 16): `grasp_batches` batches with random timesteps.
      grasp_protocol="sweep",
      grasp_batches=1,
      # Dtype of scoring and the flow: float32 whatever run.dtype ("run": the run's, before
      # issue 16; in bf16 the masks' Euler steps below ~0.004 vanish near 1).
      score_dtype="float32",
      # The iterative flow (procedures.FlowConfig).
      iterations=2 if tiny else 10 if paper else 4 if (compare or cifar) else 3,
      n_flow=2 if tiny else 5 if gpu else 4,
      eta=0.05,
      lam=1.0,
      gamma=0.5,
      n_train=5 if tiny else 1000 if paper else (100 if (compare or cifar) else 10),
      power=3.0,
      # Keep set of each iteration: top (1 - s_k) of every whole "group" (the GroupNorm unit rule
      # only when hardening); "unit" (before issue 16) rounds per unit, which collapses the
      # schedule onto iteration 1 for small units.
      rank_within="group",
      # Criterion term of the energy centred and scaled within each "group" ("all": over every
      # channel of every group at once, before issue 16).
      normalize="group",
    )
  )

  cfg.eval = ml_collections.ConfigDict(
    dict(
      num_samples=(
        32 if tiny else 50_000 if paper else 10_000 if cifar else 2048 if compare else 256
      ),
      batch_size=32 if tiny else 500 if (paper or cifar) else 128,
      ddim_steps=5 if tiny else 100 if (paper or cifar) else 50 if compare else 10,
      skip="quad" if (paper or cifar) else "uniform",
      # FD reference statistics: the "train" split (the data floor from held-out test images)
      # or the "test" split (the floor from as many training images).
      reference="test" if cifar else "train",
      # Samples per convergence-curve point (the first ones of the same noise); 0: num_samples.
      curve_samples=0,
      eta=0.0,
      clip_x0=True,
      seed=1234,  # the shared initial noise of teacher and pruned samples
      # the default FD features: a classifier trained on the data for this many steps
      feature_steps=30 if tiny else 3000 if cifar else 300,
      inception_weights="",  # pytorch-fid's pt_inception .pth/.npz -> FID with Inception pool3
      # A fixed shared.judge classifier (its features for FD, its class judge on the samples);
      # cifar: the shipped CIFAR-10 ResNet-18 (93.5%, docs/results.md). "" = feature_steps.
      judge="shared/assets/cifar10_judge" if cifar else "",
      latency_batch=32 if tiny else 16,  # tiny: = batch_size, one compilation
      latency_repeats=2 if tiny else 3,
      grid=16 if tiny else 64,
    )
  )
  cfg.run = config_utils.run_config(
    log_every=10 if tiny else 100,
    checkpoint_every=50 if tiny else 1000,
    progress=not tiny,
    dtype="bfloat16" if gpu else "float32",
  )
  return cfg
