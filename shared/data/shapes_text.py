"""The words of `shapes`: a fixed vocabulary, templated captions and question-answer pairs.

Every sequence is int32 ids `<bos> w1 ... wn <eos> <pad> ...` of a fixed length. The vocabulary
does not depend on any option, so token ids mean the same in every variant of the data set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.data import word_ids

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
POSITIONS = {
  2: ("top left", "top right", "bottom left", "bottom right"),
  3: (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
  ),
}  # fmt: skip
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("count", "colour", "shape", "size", "where", "exists")
MAX_OBJECTS = 4

SPECIALS = word_ids.SPECIALS
PAD_ID, BOS_ID, EOS_ID, UNK_ID = word_ids.PAD_ID, word_ids.BOS_ID, word_ids.EOS_ID, word_ids.UNK_ID
WORDS = (
  ("a", "and", "at", "the", "is", "are", "there", "what", "where", "how", "many", "objects")
  + ("colour", "shape", "size", "yes", "no", ".", "?", "top", "bottom", "left", "right", "center")
  + NUMBERS
  + SIZES
  + COLOURS
  + SHAPES
)
VOCAB = SPECIALS + WORDS
WORD_TO_ID = {w: i for i, w in enumerate(VOCAB)}

QUESTION_LENGTH = 12  # <bos> what colour is the circle at the bottom right ? <eos>
ANSWER_LENGTH = 4  # <bos> bottom right <eos>


def caption_length(max_objects: int) -> int:
  """<bos> + 'a large red circle at the top left' (8 words) + 'and' per object + '.' + <eos>."""
  return 9 * max_objects + 2


def encode(text: str | Sequence[str], length: int) -> np.ndarray:
  """Words (a string split on spaces, or a list) -> int32 [length] ids with <bos>/<eos>/<pad>."""
  return word_ids.encode(text, length, WORD_TO_ID, "shapes")


def decode(ids: np.ndarray | Sequence[int]) -> str | list[str]:
  """Ids -> text, stopping at <eos> and skipping <bos>/<pad>; a 2-D array gives a list."""
  return word_ids.decode(ids, VOCAB)


def describe(shape: int, colour: int, size: int, pos: int, grid: int) -> str:
  """'a large red circle at the top left'."""
  return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]} at the {POSITIONS[grid][pos]}"


def caption(objects: Sequence[tuple[int, int, int, int]], grid: int) -> str:
  """The canonical caption of a scene: its objects, in the given (reading) order."""
  return " and ".join(describe(*o, grid) for o in objects) + " ."


def parse_caption(text: str | np.ndarray, grid: int = 3) -> list[tuple[str, str, str, str]] | None:
  """A caption (text or ids) -> [(shape, colour, size, position)], or None if it is malformed.

  The inverse of `caption`, for scoring generated captions attribute by attribute.
  """
  parts = word_ids.caption_parts(text if isinstance(text, str) else decode(text))
  if parts is None:
    return None
  objects = []
  for words in parts:
    if len(words) < 6 or words[0] != "a" or words[4:6] != ["at", "the"]:
      return None
    size, colour, shape, position = words[1], words[2], words[3], " ".join(words[6:])
    if size not in SIZES or colour not in COLOURS or shape not in SHAPES:
      return None
    if position not in POSITIONS[grid]:
      return None
    objects.append((shape, colour, size, position))
  return objects


def question_answer(
  objects: Sequence[tuple[int, int, int, int]],
  kind: int,
  pick: int,
  absent: tuple[int, int] | None,
  grid: int,
) -> tuple[str, str]:
  """One templated (question, answer) about a scene.

  Args:
    objects: the scene's (shape, colour, size, pos) tuples.
    kind: an index into QUESTION_TYPES; a question the scene cannot ask unambiguously falls back
      to 'count'.
    pick: which object the question is about.
    absent: for 'exists', a (shape, colour) to ask about that is not in the scene, or None to ask
      about the picked object.
  """
  shape, colour, size, pos = objects[pick]
  others = [o for i, o in enumerate(objects) if i != pick]
  name = QUESTION_TYPES[kind]
  if name == "colour":
    ref = _refer(objects[pick], others, ("shape", "size shape", "shape pos"), grid)
    return f"what colour is the {ref} ?", COLOURS[colour]
  if name == "shape":
    return f"what shape is at the {POSITIONS[grid][pos]} ?", SHAPES[shape]
  if name == "size":
    ref = _refer(objects[pick], others, ("shape", "colour shape", "shape pos"), grid)
    return f"what size is the {ref} ?", SIZES[size]
  if name == "where":
    ref = _refer(objects[pick], others, ("shape", "colour shape", "size colour shape"), grid)
    if ref is not None:
      return f"where is the {ref} ?", POSITIONS[grid][pos]
  if name == "exists":
    s, c = absent if absent is not None else (shape, colour)
    present = any(o[0] == s and o[1] == c for o in objects)
    return f"is there a {COLOURS[c]} {SHAPES[s]} ?", "yes" if present else "no"
  return "how many objects are there ?", NUMBERS[len(objects)]


def _refer(obj, others, forms: Sequence[str], grid: int) -> str | None:
  """The first referring expression among `forms` that no other object in the scene matches."""
  fields = {"shape": 0, "colour": 1, "size": 2, "pos": 3}
  for form in forms:
    keys = [fields[k] for k in form.split()]
    if not any(all(o[k] == obj[k] for k in keys) for o in others):
      words = {
        "shape": SHAPES[obj[0]],
        "colour": COLOURS[obj[1]],
        "size": SIZES[obj[2]],
        "pos": f"at the {POSITIONS[grid][obj[3]]}",
      }
      return " ".join(words[k] for k in form.split())
  return None
