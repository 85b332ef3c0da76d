"""The text side: captions, questions and answers through a `transformers` tokenizer.

By default a word-level tokenizer is built from the data set's vocabulary with the `tokenizers`
library, saved in the workdir (`text_tokenizer/`) and loaded back as
`transformers.PreTrainedTokenizerFast`, so the pipeline is the one a pretrained tokenizer would
go through. `load_pretrained` takes any tokenizer the user has locally (a directory or a name in
the local Hugging Face cache); nothing is downloaded, and a missing one is a clear error.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from shared.errors import ConfigError

SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def _quiet_transformers():
  # transformers v5 warns on import that PyTorch is absent; only its tokenizers are used here.
  logging.getLogger("transformers").setLevel(logging.ERROR)
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_word_level(vocab: Sequence[str], directory: str):
  """A whitespace word-level tokenizer over `vocab` (which must hold the 4 specials), saved in
  `directory` and returned as a `PreTrainedTokenizerFast` that adds <bos> ... <eos>.

  Ids equal positions in `vocab`, so they match the data set's own ids when built from them.
  """
  _quiet_transformers()
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  missing = [t for t in SPECIALS.values() if t not in vocab]
  if missing:
    raise ConfigError(f"text vocabulary lacks the special tokens {missing}")
  ids = {w: i for i, w in enumerate(vocab)}
  tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=SPECIALS["unk_token"]))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  bos, eos = SPECIALS["bos_token"], SPECIALS["eos_token"]
  tok.post_processor = processors.TemplateProcessing(
    single=f"{bos} $A {eos}", special_tokens=[(bos, ids[bos]), (eos, ids[eos])]
  )
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "tokenizer.json")
  tok.save(path)
  fast = PreTrainedTokenizerFast(tokenizer_file=path, **SPECIALS)
  fast.save_pretrained(directory)
  return PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)


def load_pretrained(name_or_path: str):
  """A tokenizer the user has locally (directory or cached hub name); never downloads."""
  _quiet_transformers()
  from transformers import AutoTokenizer

  try:
    tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise ConfigError(
      f"text tokenizer {name_or_path!r} is not available locally ({str(e).splitlines()[0]}); "
      "give a local directory or download it beforehand (runs never download)"
    ) from None
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token or tok.unk_token
  return tok


def make_tokenizer(cfg, vocab: Sequence[str] | None, workdir: str):
  """`cfg.tokenizer == 'word_level'` builds one from `vocab`; anything else is a local name/path."""
  if cfg.tokenizer == "word_level":
    if vocab is None:
      raise ConfigError("text.tokenizer='word_level' needs a data set with a vocabulary")
    return build_word_level(vocab, os.path.join(workdir, "text_tokenizer"))
  return load_pretrained(cfg.tokenizer)


def encode(tokenizer, texts: Sequence[str], length: int, truncate: bool = False) -> np.ndarray:
  """Texts -> int32 [N, length] ids, <bos> text <eos> then padding.

  The specials are placed here, not by the tokenizer's template, so tokenizers without one (GPT-2
  adds neither) give the same layout. Too long is an error unless `truncate` (then the text is cut
  and still ends in <eos>).
  """
  ids = special_ids(tokenizer)
  body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  out = np.full((len(body), length), ids["pad"], np.int32)
  for i, (text, row) in enumerate(zip(texts, body, strict=True)):
    if len(row) + 2 > length:
      if not truncate:
        raise ConfigError(f"text {text!r} needs more than {length} tokens; raise text lengths")
      row = row[: length - 2]
    out[i, : len(row) + 2] = [ids["bos"], *row, ids["eos"]]
  return out


def decode(tokenizer, ids: np.ndarray) -> list[str]:
  """Ids [N, L] -> texts: a leading <bos> skipped, cut at the first <eos>, specials dropped."""
  sp = special_ids(tokenizer)
  texts = []
  for row in np.asarray(ids).tolist():
    if row and row[0] == sp["bos"]:
      row = row[1:]
    if sp["eos"] in row:
      row = row[: row.index(sp["eos"])]
    texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
  return texts


def pick_captions(stream, seed: int, start: int = 0):
  """Batches whose 'caption' is [B, K, L] (every caption of each image) -> one of the K per row,
  drawn from (seed, step), so a resumed stream draws what the uninterrupted one did. Batches
  with [B, L] captions pass unchanged."""
  for step, batch in enumerate(stream, start):
    ids = batch["caption"]
    if ids.ndim == 3:
      k = np.random.default_rng([seed, step, 7]).integers(0, ids.shape[1], len(ids))
      batch = {**batch, "caption": ids[np.arange(len(ids)), k]}
    yield batch


def normalize(text: str) -> str:
  """Natural captions -> lower-case words and punctuation separated by single spaces."""
  return " ".join(re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower()))


def caption_vocab(texts: Sequence[str], min_count: int = 1, max_size: int = 0) -> list[str]:
  """The specials, then the words of normalized `texts` seen at least `min_count` times, most
  frequent first (ties alphabetical), at most `max_size` words in all (0: no limit)."""
  counts = Counter(w for t in texts for w in normalize(t).split())
  words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  vocab = [*SPECIALS.values(), *(w for w in words if w not in SPECIALS.values())]
  return vocab[:max_size] if max_size else vocab


def special_ids(tokenizer) -> dict[str, int]:
  return {
    "pad": tokenizer.pad_token_id,
    "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
    "eos": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
  }
