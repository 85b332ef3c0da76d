"""MCAE (masked contrastive autoencoder) for cross-domain face anti-spoofing, and its baselines.

  python -m mcae --config configs/mcae.py --workdir runs/mcae                  # default: 2 CPUs
  python -m mcae --config configs/mcae.py:tiny --workdir /tmp/mcae_tiny        # seconds (tests)
  python -m mcae --config configs/mcae.py:ablations --workdir runs/mcae_abl    # design principles
  python -m mcae --config configs/mcae.py:ceiling --workdir runs/mcae_ceil     # in-domain gate
  python -m mcae --config configs/mcae.py:compare --workdir runs/mcae_cmp      # larger, for a GPU
  python -m mcae --config configs/mcae.py:paper --workdir runs/mcae_paper \
      --config.data.options.root=/data/fas_lists                               # ViT-B/16, real data

Variants:
  default    fas_proxy at 32x32, a 48-wide 3-block ViT on 8x8 patches, all four leave-one-domain-
             out protocols, every method, 3 seeds: MCAE vs ViT-from-scratch, ResNet-18 at width 4,
             MAE->FT and SupCon->FT, each classifier trained to convergence on source val.
  tiny       the same pipeline shrunk to seconds: one protocol, one seed, a few steps.
  ...,seeds=N  any variant with seeds 0..N-1 (e.g. `configs/mcae.py:compare,seeds=5`).
  ablations  MCAE's design choices on fas_proxy: mask ratio 0.5 / 0.75 / 0.9, decoder depth,
             lambda, which layers fine-tune (each a method spec with overrides).
  ceiling    the in-domain ceiling on the compare bed: a real ResNet-18 (width 64) trained to
             convergence on every domain, its source-val AUC gated at >= 0.97 (is the bed
             learnable?).
  compare    the comparison on a GPU: 64x64, ViT-S/8, MAE-only and MCAE pre-trained ~200 epochs
             then fine-tuned to convergence, ViT from scratch, ResNet-18 (w64); the 4 leave-one-
             out protocols and 2 limited-source ones (two sources -> one target); 3 seeds; the
             mechanism check (domain separability of frozen live features, MAE vs MCAE).
  paper      ViT-B/16 at 224 on OULU / CASIA / Replay / MSU frames listed in SSDG JSON lists;
             MAE's pre-training recipe (AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 * batch / 256,
             warmup + cosine), decoder 512 x 8, mask 0.75, SupCon temperature 0.07, head 128-d.

Fields the paper leaves open are marked "(ours)"; docs/mcae.md lists them with their reasons.
"""

import ml_collections

from shared import config_utils

VARIANTS = ("tiny", "ablations", "compare", "ceiling", "paper")
# compare: the leave-one-out protocols and two limited-source ones (two sources -> one target).
COMPARE_PROTOCOLS = ("d0", "d1", "d2", "d3", "d1&d2->d0", "d2&d3->d1")
# The label-only ResNet-18 is named by its width: `resnet18_w4` (~44K parameters, the CPU
# default's) is not the ResNet-18 of the literature; `resnet18_w64` (11.2M) is.
RESNET_WIDTHS = (4, 64)
ABLATIONS = (
  "mcae",
  "mcae:pretrain.mask_ratio=0.5",
  "mcae:pretrain.mask_ratio=0.9",
  "mcae:pretrain.decoder_depth=2",
  "mcae:pretrain.decoder_depth=4",
  "mcae:pretrain.supcon_weight=0.0",  # lambda = 0: MAE -> FT
  "mcae:pretrain.supcon_weight=0.1",
  "mcae:pretrain.supcon_weight=2.0",
  "mcae:pretrain.spoof_positives=class",
  "mcae:finetune.train_blocks=1",
  "mcae:finetune.train_blocks=0",  # linear probe (+ final norm)
  "mcae:pretrain.num_steps=100;finetune.num_steps=200",  # same budget, split towards labels
  "mcae:pretrain.num_steps=600",  # 3x the pre-training (beyond the baselines' budget)
)


def get_config(arg=None):
  args = config_utils.parse_arg(arg, variants=VARIANTS, seeds=0)  # seeds=N: run seeds 0..N-1
  v = args.variant
  g = "compare" if v == "ceiling" else v  # the ceiling runs on the compare bed and model sizes
  cfg = ml_collections.ConfigDict()
  cfg.method = "mcae"
  cfg.variant = v
  cfg.seed = 0  # root key; sub-run s uses fold_in(PRNGKey(seed), s)
  cfg.seeds = tuple(range(args.seeds or (1 if v == "tiny" else 3)))
  resnet = f"resnet18_w{64 if g in ('compare', 'paper') else 4}"
  cfg.methods = {
    "ablations": ABLATIONS,
    "compare": ("vit_scratch", resnet, "mae_ft", "mcae"),
    "ceiling": (resnet,),
  }.get(v, ("vit_scratch", resnet, "mae_ft", "supcon_ft", "mcae"))
  # Each entry: a target domain (leave-one-out: the others are the sources), "a&b->c" (sources
  # -> targets) or "in_domain" (every domain both); () = leave each domain out in turn.
  cfg.protocols = {"tiny": ("d0",), "compare": COMPARE_PROTOCOLS, "ceiling": ("in_domain",)}.get(
    v, ()
  )
  if v == "ceiling":
    cfg.seeds = tuple(range(args.seeds or 1))

  resolution = {"tiny": 16, "compare": 64, "paper": 224}.get(g, 32)
  cfg.data = ml_collections.ConfigDict()
  cfg.data.data_dir = ""  # "" = $IBPRUNE_DATA or ~/.cache/ibprune
  if v == "paper":
    cfg.data.name = "fas_json"
    cfg.data.options = ml_collections.ConfigDict(
      dict(
        root="",  # folder holding <domain>/<split>_label.json; "" = <data_dir>/fas_json
        domains=("oulu", "casia", "replay", "msu"),
        image_size=resolution,
        pattern="{root}/{domain}/{split}_label.json",
        image_root="",
        val_fraction=0.1,  # of each source's train videos, when it has no val list (ours)
        allow_outside_root=False,  # photo paths must stay inside root / image_root / the list's
        frames_per_video=0,  # frames read from an entry naming a video folder; 0 = all
        seed=0,
      )
    )
  else:
    sizes = {"tiny": (30, 15, 30), "compare": (750, 150, 300)}.get(g, (480, 120, 240))
    cfg.data.name = "fas_proxy"
    cfg.data.options = ml_collections.ConfigDict(
      dict(
        resolution=resolution,
        num_train=sizes[0],  # per domain
        num_val=sizes[1],
        num_test=sizes[2],
        photo_fraction=0.25,
        frames_per_video=3 if v == "tiny" else 4,  # frames of one video (scores pool per video)
        shift="attack_and_camera",  # "camera": attack bands shared, only the cameras differ
        seed=0,  # the benchmark itself stays fixed across run seeds
      )
    )

  # The ViT: 48 wide x 3 deep on 8x8 patches (16 tokens) on CPU; ViT-S/8 (384 x 12, 6 heads,
  # 64 tokens at 64 px) on a GPU; ViT-B/16.
  cfg.model = ml_collections.ConfigDict(
    dict(
      size={"paper": "B", "compare": "S"}.get(g, "mu"),
      patch_size={"paper": 16, "tiny": 4}.get(g, 8),
      width={"paper": 0, "compare": 0, "tiny": 32}.get(g, 48),  # 0 = the size's own
      depth={"paper": 0, "compare": 0, "tiny": 1}.get(g, 3),
      num_heads={"paper": 0, "compare": 0, "tiny": 2}.get(g, 3),
      use_cls_token=True,  # MAE keeps one; pooled features exclude it
      pool="mean",  # classifier pooling over patch tokens (MAE fine-tuning's global pool)
      decoder_width={"paper": 512, "compare": 256, "tiny": 32}.get(g, 48),
      decoder_num_heads={"paper": 16, "compare": 8, "tiny": 2}.get(g, 3),
      proj_hidden={"paper": 768, "compare": 384, "tiny": 32}.get(g, 48),  # dim -> dim
      proj_dim={"paper": 128, "compare": 128}.get(g, 32),  # -> 128 (SupContrast)
      # jax.nn.dot_product_attention implementation: "auto" = cuDNN's fused attention on NVIDIA
      # GPUs in bf16, else XLA's; "xla"; "cudnn". A speed choice only (docs/benchmarks.md).
      attention_impl="auto",
    )
  )

  # Pre-training: L = mae_weight * MAE + supcon_weight * SupCon (lambda = supcon_weight).
  # compare: 1,760 steps x 256 = 200 epochs of the 2,250 source frames of a leave-one-out
  # protocol (300 of the 1,500 of a two-source one).
  pre_steps = {"tiny": 4, "compare": 1760, "paper": 40_000}.get(g, 200)
  pre_batch = {"tiny": 16, "compare": 256, "paper": 256}.get(g, 32)
  cfg.pretrain = ml_collections.ConfigDict(
    dict(
      num_steps=pre_steps,
      batch_size=pre_batch,
      mask_ratio=0.75,  # MAE
      decoder_depth={"paper": 8, "compare": 2}.get(g, 1),  # MAE ViT-B: 8; light on CPU (ours)
      norm_pix=True,  # MAE's normalised-pixel targets
      mae_weight=1.0,
      supcon_weight=0.5,  # lambda (ours; the paper does not give it)
      temperature=0.07 if v == "paper" else 0.1,  # SupContrast 0.07; 0.1 (SA-FAS) for small batches
      live_positives="all_domains",  # all_domains | domain
      spoof_positives="domain_attack",  # class | attack | domain | domain_attack
      views=1,  # augmented views per image, each with its own mask (ours)
      flip=True,
      pad=0 if v == "paper" else 2,  # random shift in pixels (ours)
      optimizer=config_utils.optimizer_config(
        name="adamw",
        lr=1.5e-4 * pre_batch / 256 if v == "paper" else 1e-3,
        b1=0.9,
        b2=0.95,
        weight_decay=0.05,
        warmup_steps={"tiny": 1, "paper": 2000}.get(v, pre_steps // 10),
        schedule="cosine",
        grad_clip=0.0 if v == "paper" else 1.0,
      ),
    )
  )

  # Fine-tuning of the pre-trained encoders with a live/spoof head.
  # num_steps is a cap: fine-tuning stops earlier once source val stops improving (convergence).
  ft_steps = {"tiny": 4, "compare": 1000, "paper": 10_000}.get(g, 500)
  ft_batch = {"tiny": 16, "compare": 128, "paper": 128}.get(g, 32)
  cfg.finetune = ml_collections.ConfigDict(
    dict(
      num_steps=ft_steps,
      batch_size=ft_batch,
      train_blocks=-1,  # -1 all; k >= 0: head + final norm + last k blocks
      flip=True,
      pad=0 if v == "paper" else 2,
      label_smoothing=0.0,
      optimizer=config_utils.optimizer_config(
        name="adamw",
        lr=5e-4 * ft_batch / 256 if v == "paper" else 5e-4,
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        warmup_steps={"tiny": 1, "paper": 500}.get(v, ft_steps // 10),
        schedule="cosine",
        grad_clip=1.0,
      ),
    )
  )

  # Every classifier (fine-tuned or label-only) trains to convergence on source val: evaluated
  # every `eval_every` steps, the params with the best source-val AUC kept, stopped after
  # `patience` evaluations without a better one (0 = train to the cap, keep the best). The
  # held-out domain is never looked at.
  cfg.convergence = ml_collections.ConfigDict(
    dict(
      eval_every={"tiny": 2, "compare": 100, "paper": 1000}.get(g, 50),  # 0 = keep the last
      patience={"tiny": 1}.get(v, 5),
    )
  )
  # Is the bed learnable at all? The in-domain protocol's source-val AUC must reach this
  # (results.json 'gates', table.md); the ceiling variant runs it.
  cfg.gates = ml_collections.ConfigDict(dict(in_domain_val_auc=0.97))
  # The mechanism check (mcae/mechanism.py): domain separability of the frozen pre-trained
  # encoder's live features (a linear domain classifier's k-fold accuracy, MMD between domains).
  cfg.mechanism = ml_collections.ConfigDict(dict(enabled=True, max_per_domain=300, folds=5))

  # Baselines trained only with labels: at most pre-train + fine-tune cap steps (early-stopped).
  cfg.baselines = ml_collections.ConfigDict(
    dict(
      # compare: 1,500 x 128 = 85 epochs of a leave-one-out protocol's sources (64 in-domain).
      supervised_steps={"compare": 1500}.get(g, pre_steps + ft_steps),
      supcon_mask_ratio=0.0,  # SupCon -> FT sees whole images, as in Khosla et al.
      scratch_optimizer=config_utils.optimizer_config(
        name="adamw",
        lr=1e-3 if v != "paper" else 5e-4 * ft_batch / 256,
        b2=0.999,
        weight_decay=0.05,
        warmup_steps={"tiny": 1}.get(v, (pre_steps + ft_steps) // 10),
        grad_clip=1.0,
      ),
    )
  )
  # The methods a spec can name (mcae/methods.py): a classifier and, for the pre-trained ones,
  # the updates their pre-training applies to `pretrain` (after a spec's own overrides; None =
  # trained with labels only, for `baselines.supervised_steps`).
  cfg.method_table = ml_collections.ConfigDict(
    dict(
      vit_scratch=dict(
        description="ViT trained from scratch (supervised only)", classifier="vit", pretrain=None
      ),
      **{
        f"resnet18_w{w}": dict(
          description=f"CIFAR-style ResNet-18 at width {w}, trained with labels only (ERM)",
          classifier="resnet18",
          width=w,
          pretrain=None,
        )
        for w in RESNET_WIDTHS
      },
      mae_ft=dict(
        description="MAE pre-train -> fine-tune", classifier="vit", pretrain=dict(supcon_weight=0.0)
      ),
      supcon_ft=dict(
        description="SupCon pre-train -> fine-tune",
        classifier="vit",
        pretrain=dict(
          mae_weight=0.0,
          supcon_weight=1.0,
          mask_ratio=cfg.baselines.get_ref("supcon_mask_ratio"),
        ),
      ),
      mcae=dict(
        description="MCAE: MAE + lambda * SupCon pre-train -> fine-tune",
        classifier="vit",
        pretrain=dict(),
      ),
    )
  )
  cfg.resnet = ml_collections.ConfigDict(
    dict(
      batch_size=ft_batch,
      flip=True,
      pad=0 if v == "paper" else 2,
      label_smoothing=0.0,
      optimizer=config_utils.optimizer_config(
        name="adamw", lr=1e-3, weight_decay=5e-4, warmup_steps={"tiny": 1}.get(v, 30), grad_clip=1.0
      ),
    )
  )

  cfg.eval_batch_size = 256 if v != "tiny" else 32
  cfg.run = config_utils.run_config(
    log_every={"tiny": 2}.get(v, 50),
    checkpoint_every={"tiny": 4, "compare": 500, "paper": 2000}.get(g, 500),
    keep_checkpoints=1,
    progress=g in ("compare", "paper"),
    dtype="bfloat16" if g in ("compare", "paper") else "float32",
    tensorboard=False,
  )
  return cfg
