"""`cifar_grid`: CIFAR-10 images in a 2x2 grid, captioned, with a held-out split of class pairs.

Each scene is 64x64: four 32x32 cells in reading order (top left, top right, bottom left, bottom
right), 1-2 of them holding a whole CIFAR-10 image (not resized), the rest a plain background.
Captions and question-answer pairs name only each object's class and cell ("a cat at the top left
and a ship at the bottom right ."); the pose, background and texture of the photograph are the
high-entropy content they never mention (InfoTok issue 17's natural-image bed, beside `shapes`).

Objects of 'train' come from the first 90% of CIFAR-10's train split, of 'val' from its last 10%
(the last 5,000 images), of 'test' and 'heldout' from its test split. A few unordered pairs of
distinct classes are held out: no scene of 'train', 'val' or 'test' holds both classes of one,
every 'heldout' scene has exactly two objects forming one. One-object scenes are never held out.

Needs cifar10 prepared (`python -m shared.data.prepare cifar10`); the built splits are cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.data import real_sets, word_ids
from shared.data.registry import register
from shared.errors import DataError

SPLITS = ("train", "val", "test", "heldout")
CLASSES = real_sets.CIFAR10_CLASSES
GRID = 2
CELL = 32  # CIFAR-10's side: a cell holds one image as published.
RESOLUTION = GRID * CELL
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("where", "what", "count", "exists")
MAX_OBJECTS = GRID * GRID
VAL_FRACTION = 0.1  # The last 10% of CIFAR-10's train split is the pool of 'val' objects.
CHUNK = 2048  # Scenes assembled at a time, to bound the temporary copies of source images.

SPECIALS = word_ids.SPECIALS
PAD_ID, BOS_ID, EOS_ID, UNK_ID = word_ids.PAD_ID, word_ids.BOS_ID, word_ids.EOS_ID, word_ids.UNK_ID
WORDS = (
  ("a", "an", "and", "at", "the", "is", "are", "there", "what", "where", "how", "many", "objects")
  + ("yes", "no", "nothing", ".", "?", "top", "bottom", "left", "right")
  + NUMBERS[1:]
  + CLASSES
)
VOCAB = SPECIALS + WORDS
WORD_TO_ID = {w: i for i, w in enumerate(VOCAB)}

QUESTION_LENGTH = 9  # <bos> what is at the bottom right ? <eos>
ANSWER_LENGTH = 4  # <bos> bottom right <eos>


def caption_length(max_objects: int) -> int:
  """<bos> + 'a cat at the bottom right' (6 words) + 'and' between objects + '.' + <eos>."""
  return 7 * max_objects + 2


def heldout_pairs(seed: int = 0, heldout_fraction: float = 0.1) -> list[tuple[int, int]]:
  """The held-out unordered class pairs (a < b), sharing no class while they last.

  round(heldout_fraction * 45) of the 45 pairs of distinct classes: first the five disjoint pairs
  of a seeded permutation of the classes, then the other pairs in a seeded order.
  """
  n = len(CLASSES)
  all_pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
  k = int(round(heldout_fraction * len(all_pairs)))
  if not 0 <= k < len(all_pairs):
    raise DataError(f"cifar_grid: heldout_fraction {heldout_fraction} must be in [0, 1)")
  rng = np.random.default_rng([seed % 2**64, 17])
  perm = rng.permutation(n).tolist()
  disjoint = [tuple(sorted(perm[i : i + 2])) for i in range(0, n, 2)]
  rest = [p for p in all_pairs if p not in disjoint]
  order = disjoint + [rest[i] for i in rng.permutation(len(rest))]
  return sorted(order[:k])


def info(
  seed: int = 0,
  num_train: int = 20_000,
  num_val: int = 2_000,
  num_test: int = 2_000,
  num_heldout: int = 2_000,
  min_objects: int = 1,
  max_objects: int = 2,
  heldout_fraction: float = 0.1,
  background: int | Sequence[int] = 128,
) -> dict:
  """Classes, sizes, the vocabulary, the positions and the held-out pairs (by class name)."""
  _check(min_objects, max_objects, background)
  return {
    "num_classes": len(CLASSES),
    "class_names": list(CLASSES),
    "label": "class",  # CIFAR-10 class of the first object in reading order.
    "image_shape": (RESOLUTION, RESOLUTION, 3),
    "sizes": dict(zip(SPLITS, (num_train, num_val, num_test, num_heldout), strict=True)),
    "vocab": list(VOCAB),
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
    "position_names": list(POSITIONS),
    "question_types": list(QUESTION_TYPES),
    "heldout_pairs": [(CLASSES[a], CLASSES[b]) for a, b in heldout_pairs(seed, heldout_fraction)],
    "max_objects": max_objects,
    "grid": GRID,
    "caption_length": caption_length(max_objects),
    "question_length": QUESTION_LENGTH,
    "answer_length": ANSWER_LENGTH,
  }


@register("cifar_grid", splits=SPLITS, info=info)
def build(
  split: str,
  data_dir: str,
  *,
  seed: int = 0,
  num_train: int = 20_000,
  num_val: int = 2_000,
  num_test: int = 2_000,
  num_heldout: int = 2_000,
  min_objects: int = 1,
  max_objects: int = 2,
  heldout_fraction: float = 0.1,
  background: int | Sequence[int] = 128,
) -> dict[str, np.ndarray]:
  """One split of scenes.

  Args:
    seed: draws everything: the held-out pairs, the scenes, the source images, the questions.
    num_train, num_val, num_test, num_heldout: split sizes.
    min_objects, max_objects: objects per scene, 1 <= min <= max <= 4; 'heldout' scenes always
      have two (so it needs max_objects >= 2).
    heldout_fraction: of the 45 unordered pairs of distinct classes.
    background: the grey level (0-255) of empty cells, or an (r, g, b).

  Returns:
    'image' uint8 [N, 64, 64, 3]; 'clean', the same array (there is no nuisance to remove: the
    photographs' content is the signal the captions leave out); 'label' (the first object's
    class); per-object 'cls', 'pos' (cell 0-3 in reading order) and 'source' (the image's row in
    its CIFAR-10 split, train or test as published), [N, max_objects] int32 in reading order, -1
    where absent; 'n_objects'; 'caption', 'question', 'answer' (token ids, see `decode`) and
    'question_type' (an index into QUESTION_TYPES).

  Raises:
    DataError: cifar10 is not prepared (naming the command that prepares it), bad options.
  """
  _check(min_objects, max_objects, background)
  sizes = dict(zip(SPLITS, (num_train, num_val, num_test, num_heldout), strict=True))
  heldout = heldout_pairs(seed, heldout_fraction)
  if split == "heldout" and (max_objects < 2 or not heldout):
    raise DataError(
      "cifar_grid: the 'heldout' split needs max_objects >= 2 and at least one held-out pair "
      f"(got max_objects {max_objects}, heldout_fraction {heldout_fraction}: {len(heldout)} pairs)"
    )
  pool_image, pool_label, pool_rows = _pool(split, data_dir)
  split_id = SPLITS.index(split)
  rng = lambda stream: np.random.default_rng([seed % 2**64, split_id, stream])
  if split == "heldout":
    cls, pos = _heldout_scenes(rng(0), sizes[split], heldout, max_objects)
  else:
    cls, pos = _scenes(rng(0), sizes[split], heldout, min_objects, max_objects)
  source = _sources(rng(1), cls, pool_label, pool_rows)
  image = _assemble(pool_image, source, pos, background)
  n_objects = (cls >= 0).sum(1).astype(np.int32)
  text = _text(rng(2), cls, pos, n_objects, max_objects)
  return {
    "image": image,
    "clean": image,
    "label": cls[:, 0].copy(),
    "cls": cls,
    "pos": pos,
    "source": source,
    "n_objects": n_objects,
    **text,
  }


def _pool(split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The CIFAR-10 split objects of `split` come from, and the rows of it they may use."""
  arrays = real_sets.read_prepared(
    "cifar10", "test" if split in ("test", "heldout") else "train", data_dir
  )
  image, label = arrays["image"], arrays["label"].astype(np.int32)
  if image.dtype != np.uint8 or image.shape[1:] != (CELL, CELL, 3) or len(image) != len(label):
    raise DataError(
      f"cifar_grid: prepared cifar10 has images {image.dtype} {image.shape} and {len(label)} "
      f"labels; expected uint8 [N, {CELL}, {CELL}, 3], one label each"
    )
  n = len(label)
  first_val = n - int(round(VAL_FRACTION * n))
  rows = {"train": np.arange(first_val), "val": np.arange(first_val, n)}.get(split, np.arange(n))
  return image, label, rows


def _scenes(
  rng: np.random.Generator, n: int, heldout: Sequence[tuple[int, int]], min_objects: int,
  max_objects: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
  """Classes and cells [n, max_objects] (-1 where absent), in reading order, no held-out pair.

  Classes are independent and uniform, scenes with a held-out pair drawn again: uniform over the
  allowed class tuples (same-class objects included).
  """
  n_objects = rng.integers(min_objects, max_objects + 1, n)
  present = np.arange(max_objects)[None, :] < n_objects[:, None]
  pos = _cells(rng, n, max_objects, present)
  banned = np.zeros((len(CLASSES), len(CLASSES)), bool)
  for a, b in heldout:
    banned[a, b] = banned[b, a] = True
  cls = np.full((n, max_objects), -1, np.int32)
  todo, rounds = np.arange(n), 0
  while len(todo):
    rounds += 1
    if rounds > 10_000:  # pragma: no cover (all-same-class scenes alone are accepted 1 in 1000)
      raise DataError("cifar_grid: could not draw scenes without a held-out pair")
    draw = rng.integers(len(CLASSES), size=(len(todo), max_objects))
    cls[todo] = np.where(present[todo], draw, -1)
    c = cls[todo]
    bad = np.zeros(len(todo), bool)
    for i in range(max_objects):
      for j in range(i + 1, max_objects):
        both = (c[:, i] >= 0) & (c[:, j] >= 0)
        bad |= both & banned[np.maximum(c[:, i], 0), np.maximum(c[:, j], 0)]
    todo = todo[bad]
  return cls, pos


def _heldout_scenes(
  rng: np.random.Generator, n: int, heldout: Sequence[tuple[int, int]], max_objects: int
) -> tuple[np.ndarray, np.ndarray]:
  """Two objects per scene, their classes a held-out pair in either order."""
  present = np.arange(max_objects)[None, :] < 2
  pos = _cells(rng, n, max_objects, np.broadcast_to(present, (n, max_objects)))
  pair = np.asarray(heldout, np.int32)[rng.integers(len(heldout), size=n)]
  swap = rng.random(n) < 0.5
  pair = np.where(swap[:, None], pair[:, ::-1], pair)
  cls = np.full((n, max_objects), -1, np.int32)
  cls[:, :2] = pair
  return cls, pos


def _cells(rng: np.random.Generator, n: int, max_objects: int, present: np.ndarray) -> np.ndarray:
  """Distinct cells per scene, sorted into reading order, -1 where absent."""
  cells = np.argsort(rng.random((n, MAX_OBJECTS)), axis=1)[:, :max_objects]
  pos = np.sort(np.where(present, cells, MAX_OBJECTS), axis=1)
  return np.where(pos < MAX_OBJECTS, pos, -1).astype(np.int32)


def _sources(
  rng: np.random.Generator, cls: np.ndarray, label: np.ndarray, rows: np.ndarray
) -> np.ndarray:
  """A source row per object: each class's pool images in a seeded order, again when used up."""
  source = np.full(cls.shape, -1, np.int32)
  flat_cls, flat_src = cls.reshape(-1), source.reshape(-1)
  for c in range(len(CLASSES)):
    slots = np.flatnonzero(flat_cls == c)
    if not len(slots):
      continue
    candidates = rows[label[rows] == c]
    if not len(candidates):
      raise DataError(f"cifar_grid: the source pool has no image of class {CLASSES[c]!r}")
    order = candidates[rng.permutation(len(candidates))]
    flat_src[slots] = order[np.arange(len(slots)) % len(order)]
  return source


def _assemble(
  pool: np.ndarray, source: np.ndarray, pos: np.ndarray, background: int | Sequence[int]
) -> np.ndarray:
  n = len(source)
  image = np.empty((n, RESOLUTION, RESOLUTION, 3), np.uint8)
  image[...] = np.asarray(background, np.uint8)
  for lo in range(0, n, CHUNK):
    part, src, where = image[lo : lo + CHUNK], source[lo : lo + CHUNK], pos[lo : lo + CHUNK]
    for cell in range(MAX_OBJECTS):
      r, c = divmod(cell, GRID)
      scene, slot = np.nonzero(where == cell)
      part[scene, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = pool[src[scene, slot]]
  return image


def _text(rng, cls, pos, n_objects, max_objects) -> dict[str, np.ndarray]:
  """Captions and one question-answer pair per scene, as token ids."""
  n = len(cls)
  kinds = rng.integers(len(QUESTION_TYPES), size=n)
  picks = (rng.random(n) * n_objects).astype(int)
  ask_other = rng.random(n) < 0.5  # 'what' about an empty cell, 'exists' about an absent class.
  others = rng.random(n)
  length = caption_length(max_objects)
  caption = np.empty((n, length), np.int32)
  question = np.empty((n, QUESTION_LENGTH), np.int32)
  answer = np.empty((n, ANSWER_LENGTH), np.int32)
  kind_out = np.empty(n, np.int32)
  cls_rows, pos_rows = cls.tolist(), pos.tolist()
  for i in range(n):
    objects = list(zip(cls_rows[i][: n_objects[i]], pos_rows[i][: n_objects[i]], strict=True))
    caption[i] = encode(caption_text(objects), length)
    kind, q, a = question_answer(objects, int(kinds[i]), int(picks[i]), ask_other[i], others[i])
    question[i] = encode(q, QUESTION_LENGTH)
    answer[i] = encode(a, ANSWER_LENGTH)
    kind_out[i] = kind
  return {"caption": caption, "question": question, "answer": answer, "question_type": kind_out}


def article(name: str) -> str:
  return "an" if name[0] in "aeiou" else "a"


def caption_text(objects: Sequence[tuple[int, int]]) -> str:
  """'a cat at the top left and a ship at the bottom right .' from (class, cell) in order."""
  parts = [f"{article(CLASSES[c])} {CLASSES[c]} at the {POSITIONS[p]}" for c, p in objects]
  return " and ".join(parts) + " ."


def question_answer(
  objects: Sequence[tuple[int, int]], kind: int, pick: int, other: bool, u: float
) -> tuple[int, str, str]:
  """One templated (question type, question, answer) about a scene.

  Args:
    objects: the scene's (class, cell) pairs.
    kind: an index into QUESTION_TYPES. 'where' about a class that two objects share asks 'what'
      about the picked object's cell instead; the returned type is the one asked.
    pick: which object the question is about.
    other: 'what' asks about an empty cell (when there is one) and 'exists' about a class not in
      the scene, instead of the picked object.
    u: in [0, 1), picks that empty cell or absent class.
  """
  cls, cell = objects[pick]
  present = [c for c, _ in objects]
  name = QUESTION_TYPES[kind]
  if name == "where" and present.count(cls) == 1:
    return kind, f"where is the {CLASSES[cls]} ?", POSITIONS[cell]
  if name in ("where", "what"):
    empty = [p for p in range(MAX_OBJECTS) if p not in [q for _, q in objects]]
    if name == "what" and other and empty:
      return QUESTION_TYPES.index("what"), _what(empty[int(u * len(empty))]), "nothing"
    return QUESTION_TYPES.index("what"), _what(cell), CLASSES[cls]
  if name == "exists":
    absent = [c for c in range(len(CLASSES)) if c not in present]
    asked = absent[int(u * len(absent))] if other else cls
    answer = "yes" if asked in present else "no"
    return kind, f"is there {article(CLASSES[asked])} {CLASSES[asked]} ?", answer
  return kind, "how many objects are there ?", NUMBERS[len(objects)]


def _what(cell: int) -> str:
  return f"what is at the {POSITIONS[cell]} ?"


def encode(text: str | Sequence[str], length: int) -> np.ndarray:
  """Words (a string split on spaces, or a list) -> int32 [length] ids with <bos>/<eos>/<pad>."""
  return word_ids.encode(text, length, WORD_TO_ID, "cifar_grid")


def decode(ids: np.ndarray | Sequence[int]) -> str | list[str]:
  """Ids -> text, stopping at <eos> and skipping <bos>/<pad>; a 2-D array gives a list."""
  return word_ids.decode(ids, VOCAB)


def parse_caption(text: str | np.ndarray) -> list[tuple[str, str]] | None:
  """A caption (text or ids) -> [(class_name, position_name)], or None if it is malformed.

  The inverse of the captions here, for scoring generated ones; 'a' and 'an' are both accepted.
  """
  parts = word_ids.caption_parts(text if isinstance(text, str) else decode(text))
  if parts is None:
    return None
  objects = []
  for words in parts:
    if len(words) < 4 or words[0] not in ("a", "an") or words[2:4] != ["at", "the"]:
      return None
    name, position = words[1], " ".join(words[4:])
    if name not in CLASSES or position not in POSITIONS:
      return None
    objects.append((name, position))
  return objects


def _check(min_objects: int, max_objects: int, background) -> None:
  if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
    raise DataError(
      f"cifar_grid: need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects}) <= "
      f"{MAX_OBJECTS}"
    )
  value = np.asarray(background)
  if (
    value.dtype.kind not in "iu"
    or value.shape not in ((), (3,))
    or not np.all((value >= 0) & (value <= 255))
  ):
    raise DataError(
      f"cifar_grid: background must be a grey level or (r, g, b) in 0-255, got {background!r}"
    )
