"""Fixed-vocabulary word ids of the built-in captioned scenes (`shapes`, `cifar_grid`).

Every sequence is int32 ids `<bos> w1 ... wn <eos> <pad> ...` of a fixed length; the four special
tokens have the same ids in every set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.errors import DataError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIALS))


def encode(
  text: str | Sequence[str], length: int, word_to_id: Mapping[str, int], set_name: str
) -> np.ndarray:
  """Words (a string split on spaces, or a list) -> int32 [length] ids with <bos>/<eos>/<pad>."""
  words = text.split() if isinstance(text, str) else list(text)
  if len(words) + 2 > length:
    raise DataError(f"{set_name}: {' '.join(words)!r} does not fit in {length} tokens")
  ids = [BOS_ID] + [word_to_id.get(w, UNK_ID) for w in words] + [EOS_ID]
  return np.asarray(ids + [PAD_ID] * (length - len(ids)), np.int32)


def decode(ids: np.ndarray | Sequence[int], vocab: Sequence[str]) -> str | list[str]:
  """Ids -> text, stopping at <eos> and skipping <bos>/<pad>; a 2-D array gives a list."""
  ids = np.asarray(ids)
  if ids.ndim == 2:
    return [decode(row, vocab) for row in ids]
  words = []
  for i in ids.tolist():
    if i == EOS_ID:
      break
    if i not in (PAD_ID, BOS_ID):
      words.append(vocab[i] if 0 <= i < len(vocab) else SPECIALS[UNK_ID])
  return " ".join(words)


def caption_parts(text: str) -> list[list[str]] | None:
  """'<object> and <object> .' -> the words of each object; None unless it ends with ' .'."""
  text = text.strip()
  if not text.endswith(" ."):
    return None
  return [part.split() for part in text[:-2].split(" and ")]
