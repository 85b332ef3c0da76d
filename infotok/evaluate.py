"""Evaluation of tokenizers and unified models: understanding, generation, reconstruction, rate.

  understanding   greedy captions and VQA answers of a unified model from an image's codes:
                  caption exact match, per-attribute caption accuracy (objects parsed back with
                  `shared.data.shapes.parse_caption`, compared in reading order), VQA exact match
                  (overall and per question type).
  generation      codes sampled from a caption, decoded by the frozen tokenizer, parsed by the
                  judge: per-attribute accuracy of the described objects, spurious-object rate,
                  all-correct rate; FD between judge features of generated and real images.
  reconstruction  PSNR against the nuisance-laden input `image` and the `clean` render, FD, the
                  judge's accuracy on reconstructions (the task relevance kept by the tokens),
                  an InfoNCE lower bound on I(Z; Y) with the judge as critic, code usage, rate.
Plots: the information plane (rate vs relevance) of a beta sweep; sample grids.

On image-caption sets (`infotok.captions`) the judge is a retrieval model: understanding is BLEU-4
and caption R-precision, generation and relevance are R-precision (see that module). Functions
here talk to any judge through `judge.judgement(images, arrays)` (`infotok.judge.Judging`): one
pass of the judge over an image set, from which its scores, per-image scores, FD features and
critic all derive, so each evaluation runs the judge once per image set.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from infotok import beds, captions, quantizers, regularizers
from infotok import text as text_lib
from shared import metrics as metrics_lib
from shared import mi


def caption_scores(predicted: list[str], arrays, bed: beds.Bed, grid: int) -> dict[str, float]:
  """Parse rate, object-count accuracy and per-attribute accuracy of generated captions.

  Attribute accuracy: over all ground-truth objects, the fraction whose attribute equals that of
  the generated object at the same index (a missing or unparsable object counts as wrong);
  'item_caption_attribute' holds, per caption, that fraction over its own objects' attributes.
  Attributes: the bed's (`bed.attrs`: shape, colour, size, position on `shapes`; class, position
  on `cifar_grid`).
  """
  attrs = bed.attrs
  parsed, hits = 0, dict.fromkeys(attrs, 0)
  count_ok, n_obj, per_item = 0, 0, []
  for i, text in enumerate(predicted):
    truth = bed.objects_of(arrays, i, grid)
    got = bed.parse_caption(text, grid)
    if got is not None:
      parsed += 1
      count_ok += len(got) == len(truth)
    item_hits = 0
    for j, obj in enumerate(truth):
      n_obj += 1
      if got is not None and j < len(got):
        for a, x, y in zip(attrs, obj, got[j], strict=True):
          hits[a] += x == y
          item_hits += x == y
    per_item.append(item_hits / max(len(attrs) * len(truth), 1))
  n = max(len(predicted), 1)
  out = {f"caption_{a}": hits[a] / max(n_obj, 1) for a in attrs}
  out["item_caption_attribute"] = per_item  # per caption: its objects' attributes right
  out["caption_attribute_mean"] = float(np.mean([out[f"caption_{a}"] for a in attrs]))
  out["caption_parsed"] = parsed / n
  out["caption_count"] = count_ok / n
  return out


def understanding(
  trainer, params, tokens, arrays, text_tok, bed: beds.Bed, grid: int | None, n: int, judge=None
) -> dict:
  """Captioning and VQA on the first n examples of a split (codes from the frozen tokenizer).

  Image-caption sets (no questions): BLEU-4 against every reference and the judge's caption
  R-precision instead. 'item_understanding': the per-example score of the paired statistics
  (shapes: the mean of VQA exact match and the caption's attribute accuracy; image-caption sets:
  the caption's retrieval hit).
  """
  tokens = tokens[:n]
  sub = {k: v[:n] for k, v in arrays.items()}
  caption_ids = trainer.caption(params, tokens)
  texts = text_lib.decode(text_tok, caption_ids)
  reference = text_lib.decode(text_tok, sub["caption_ids"])
  if bed.captions:
    hyps = [text_lib.normalize(c).split() for c in texts]
    out = {"caption_bleu4": metrics_lib.corpus_bleu(hyps, captions.references(sub, n))}
    caption_retrieval, caption_hits = judge.judge_captions(sub["image"], caption_ids)
    out.update(caption_retrieval)
    out["item_understanding"] = _rounded(caption_hits)
    out["samples"] = [
      {"caption": c, "reference": r} for c, r in list(zip(texts, reference, strict=True))[:4]
    ]
    return out
  out = caption_scores(texts, sub, bed, grid)
  caption_items = np.asarray(out.pop("item_caption_attribute"))
  out["caption_exact"] = float(np.mean([a == b for a, b in zip(texts, reference, strict=True)]))
  answers = text_lib.decode(text_tok, trainer.answer(params, tokens, sub["question_ids"]))
  truth = text_lib.decode(text_tok, sub["answer_ids"])
  correct = np.asarray([a == b for a, b in zip(answers, truth, strict=True)])
  out["vqa_accuracy"] = float(correct.mean())
  # The paired statistics' per-item score (infotok.stats): the mean of the two understanding tasks.
  out["item_understanding"] = _rounded((correct + caption_items) / 2)
  for t, name in enumerate(bed.question_types):
    sel = sub["question_type"] == t
    if sel.any():
      out[f"vqa_{name}"] = float(correct[sel].mean())
  out["samples"] = [
    {"caption": c, "reference": r, "answer": a, "truth": t}
    for c, r, a, t in list(zip(texts, reference, answers, truth, strict=True))[:4]
  ]
  return out


def generation(trainer, params, tok_trainer, tok_params, arrays, judge, key, n: int):
  """Images generated from the first n captions of a split, judged (per attribute on `shapes`,
  by retrieval on image-caption sets); 'item_generation' per image (`judge.item_scores`).

  Returns (metrics, generated images [n, H, W, 3]).
  """
  prompts = arrays["caption_ids"][:n]
  codes = trainer.generate_images(params, prompts, key)
  images = tok_trainer.decode(tok_params, codes)
  judged = judge.judgement(images, arrays)  # the judge's one pass over the generated images
  out = {f"gen_{k}": v for k, v in judged.scores().items()}
  out["item_generation"] = _rounded(judged.items())
  out["gen_fd"] = feature_fd(judged.features(), judge.reference_features(arrays, n))
  out["gen_code_entropy"] = quantizers.code_usage(codes, tok_trainer.num_codes)["code_entropy"]
  return out, images


def _rounded(scores) -> list[float]:
  """Per-item scores for a result.json (6 digits)."""
  return [round(float(v), 6) for v in np.asarray(scores, np.float64).reshape(-1)]


def feature_fd(features_a, features_b) -> float:
  """Frechet distance between Gaussians fitted to two sets of judge features (`judge.features`)."""
  a = metrics_lib.FeatureStats().update(features_a)
  b = metrics_lib.FeatureStats().update(features_b)
  return a.frechet_distance(b)


def per_position_rate(indices_NxT: np.ndarray, num_codes: int) -> float:
  """sum_t H(code_t), nats/image: an upper bound on H(Z) = I(X; Z) for a deterministic encoder."""
  return float(
    sum(
      quantizers.code_usage(indices_NxT[:, t], num_codes)["code_entropy"]
      for t in range(indices_NxT.shape[1])
    )
  )


def reconstruction(tok_trainer, params, arrays, judge, n: int, passes: dict | None = None) -> dict:
  """Reconstruction quality, task relevance and rate of a tokenizer on the first n examples.

  The tokenizer runs once over the images (`TokenizerTrainer.evaluate`: reconstructions,
  posterior and codes of one encoder pass); `passes`, when given, receives that pass's outputs
  (the caller reuses the codes). The real images' FD features come from the judge's cache
  (`Judging.reference_features`): one judge pass per split and n in a run, not one per tokenizer.

  Returns (metrics, reconstructions [n, H, W, 3]).
  """
  images, clean = arrays["image"][:n], arrays["clean"][:n]
  encoded = tok_trainer.evaluate(params, images)  # the tokenizer's one pass over the images
  if passes is not None:
    passes.update(encoded)
  recon = encoded["recon"]
  judged = judge.judgement(recon, arrays)  # the judge's one pass over the reconstructions
  out = {
    "psnr_image": float(jnp.mean(metrics_lib.psnr(jnp.asarray(recon), jnp.asarray(images)))),
    "psnr_clean": float(jnp.mean(metrics_lib.psnr(jnp.asarray(recon), jnp.asarray(clean)))),
    "recon_fd": feature_fd(judged.features(), judge.reference_features(arrays, n)),
  }
  scores = judged.scores()
  out["relevance"] = scores[judge.relevance_key]
  # I(Z; Y) >= I(recon(Z); Y) >= I_NCE with the judge as a fixed critic (shared.mi.infonce).
  critic = jnp.asarray(judged.critic(), jnp.float32)
  out["relevance_nce_nats"] = float(mi.infonce(critic))
  out.update({f"recon_{k}": v for k, v in scores.items()})
  mu, logvar = encoded["mu"], encoded["logvar"]
  out["kl_nats"] = float(
    np.mean(np.asarray(regularizers.vib_rate(jnp.asarray(mu), jnp.asarray(logvar))))
  )
  if tok_trainer.num_codes:
    idx = encoded["indices"]
    out.update(quantizers.code_usage(idx, tok_trainer.num_codes))
    out["rate_nats"] = per_position_rate(idx, tok_trainer.num_codes)
  return out, recon


# ------------------------------------------------------------------------------------------------
# Selection on validation


def select_largest_within(points: list[dict], key: str, reference: float, tolerance: float) -> int:
  """Index of the point with the largest `key` (a beta) whose validation relevance is at least
  reference - tolerance; the most relevant point when none qualifies.

  The IB reading: compress as much as possible while keeping the task-relevant information.
  """
  ok = [i for i, p in enumerate(points) if p["relevance"] >= reference - tolerance]
  if not ok:
    return int(np.argmax([p["relevance"] for p in points]))
  return max(ok, key=lambda i: points[i][key])


# ------------------------------------------------------------------------------------------------
# Figures


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def information_plane(
  sweeps: dict[str, list[dict]],
  baselines: dict[str, dict],
  path: str,
  relevance_label: str = "judge accuracy on reconstructions",
) -> str:
  """Rate (sum of per-position code entropies, nats/image) vs relevance (judge accuracy on
  reconstructions), one line per sweep (points with their swept 'value'), `baselines` as
  markers; a second panel with the KL of the sweeps over the KL beta (labels naming 'betas')."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, points in sweeps.items():
    pts = sorted(points, key=lambda p: p["value"])
    # The KL is a rate only where the posterior variance is trained (the VIB variants).
    panels = ("rate_nats", "kl_nats") if "betas" in name else ("rate_nats",)
    for ax, x in zip(axes, panels, strict=False):
      xs = [p[x] for p in pts]
      ys = [p["relevance"] for p in pts]
      ax.plot(xs, ys, "o-", label=name)
      for p, xv, yv in zip(pts, xs, ys, strict=True):
        ax.annotate(
          f"{p['value']:.0e}", (xv, yv), fontsize=7, textcoords="offset points", xytext=(3, 3)
        )
  for name, p in baselines.items():
    axes[0].plot([p["rate_nats"]], [p["relevance"]], "s", label=name)
  axes[0].set_xlabel("rate: sum_t H(code_t) [nats / image]")
  axes[1].set_xlabel("KL-beta sweeps: KL(q(z|x) || N(0, I)) [nats / image]")
  for ax in axes:
    ax.set_ylabel(f"relevance: {relevance_label} (val)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("Information plane over the sweeps (validation split)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def sample_grid(rows: dict[str, np.ndarray], path: str, titles: list[str] | None = None) -> str:
  """A grid of images: one row per entry of `rows` (name -> [k, H, W, 3])."""
  plt = _plt()
  names = list(rows)
  k = max(len(v) for v in rows.values())
  fig, axes = plt.subplots(len(names), k, figsize=(1.3 * k, 1.4 * len(names)), squeeze=False)
  for r, name in enumerate(names):
    for c in range(k):
      ax = axes[r, c]
      ax.axis("off")
      if c < len(rows[name]):
        ax.imshow(np.clip(rows[name][c], 0, 1), interpolation="nearest")
      if c == 0:
        ax.set_title(name, fontsize=7, loc="left")
  if titles:
    fig.text(0.01, 0.005, " | ".join(titles)[:400], fontsize=5)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
