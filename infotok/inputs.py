"""The data splits of an InfoTok run and their text as ids.

On `shapes` and `cifar_grid` (built in) the splits carry per-object attributes, questions and
answers; on an image-caption set they come from `infotok.captions` (which bed: `infotok.beds`).
"""

from __future__ import annotations

from infotok import beds, captions
from infotok import text as text_lib
from shared import data as data_lib

SPLITS = ("train", "val", "test", "heldout")


def load_data(cfg) -> tuple[dict[str, dict], dict]:
  """All splits of the data set (with per-object attributes on the built-in beds), and its info."""
  bed = beds.bed_of(cfg)
  if bed.captions:
    return captions.load_data(cfg)
  options = dict(
    **bed.options(cfg),
    seed=cfg.seed,
    num_train=cfg.num_train,
    num_val=cfg.num_val,
    num_test=cfg.num_test,
    num_heldout=cfg.num_heldout,
  )
  data_dir = cfg.data_dir or None
  # InfoTok's host code (judge, metrics, tokens) works on whole float splits of small scenes.
  splits = {
    s: data_lib.images_to_float(data_lib.load(cfg.name, s, data_dir=data_dir, **options))
    for s in SPLITS
  }
  return splits, data_lib.info(cfg.name, data_dir=data_dir, **options)


def make_text(config, splits: dict, info: dict, workdir: str, pretrained=None):
  """The text tokenizer (`pretrained`, when already loaded), and the splits' text as ids
  ('caption_ids', on `shapes` also 'question_ids', 'answer_ids')."""
  bed = beds.bed_of(config.data)
  caption_set = bed.captions
  word_level = config.text.tokenizer == "word_level"
  vocab = captions.vocabulary(splits, config.text) if caption_set and word_level else None
  text_tok = pretrained or text_lib.make_tokenizer(config.text, vocab or info.get("vocab"), workdir)
  if caption_set:
    captions.add_text_ids(splits, text_tok, config.text, word_level)
  else:
    add_text_ids(splits, text_tok, config.text, bed)
  return text_tok


def add_text_ids(splits: dict, text_tok, cfg, bed: beds.Bed) -> None:
  """Adds 'caption_ids', 'question_ids', 'answer_ids' from the text (the bed's own word ids,
  `bed.decode`) through `text_tok`."""
  lengths = {"caption": cfg.caption_len, "question": cfg.question_len, "answer": cfg.answer_len}
  for arrays in splits.values():
    for field, length in lengths.items():
      texts = bed.decode(arrays[field])
      arrays[f"{field}_ids"] = text_lib.encode(text_tok, texts, length)
