"""`shapes`: procedural captioned scenes with nuisance content and a compositional held-out split.

Each scene has 1-2 objects, each a (shape, colour, size, position) with the position a cell of a
`grid` x `grid` layout ("top left", ...). Captions and question-answer pairs name only those
attributes; the textured background, pixel noise, colour jitter and sub-cell position jitter are
high-entropy nuisance they never mention. 'clean' is the same scene without the nuisance, for
reconstruction targets and judges; `render` draws it from attributes alone.

A fraction of the (shape, colour) combinations is held out: no object in 'train', 'val' or 'test'
has one, every object in 'heldout' has one. Pixels are 8-bit and stay within [0.04, 0.96].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.data import shapes_render as rnd
from shared.data import shapes_text as txt
from shared.data.registry import register
from shared.errors import DataError

SPLITS = ("train", "val", "test", "heldout")
LABELS = ("shape", "colour", "shape_colour")
ATTRIBUTES = ("shape", "colour", "size", "pos")
decode = txt.decode
encode = txt.encode
parse_caption = txt.parse_caption
CHUNK = 2048  # Images rendered at a time, to bound memory at resolution 64.


def heldout_combinations(seed: int = 0, heldout_fraction: float = 0.1) -> list[tuple[int, int]]:
  """The held-out (shape, colour) pairs: distinct shapes and distinct colours while they last."""
  n_shapes, n_colours = len(txt.SHAPES), len(txt.COLOURS)
  k = int(round(heldout_fraction * n_shapes * n_colours))
  if not 0 <= k < n_shapes * n_colours:
    raise DataError(f"shapes: heldout_fraction {heldout_fraction} must be in [0, 1)")
  rng = np.random.default_rng([seed % 2**64, 99])
  shapes, colours = rng.permutation(n_shapes), rng.permutation(n_colours)
  # (i mod 5, i mod 6) are distinct for i < 30, so the pairs never repeat.
  return sorted((int(shapes[i % n_shapes]), int(colours[i % n_colours])) for i in range(k))


def info(
  resolution: int = 32,
  grid: int = 3,
  min_objects: int = 1,
  max_objects: int = 2,
  label: str = "shape_colour",
  seed: int = 0,
  heldout_fraction: float = 0.1,
  nuisance: float = 1.0,
  num_train: int = 20_000,
  num_val: int = 2_000,
  num_test: int = 2_000,
  num_heldout: int = 2_000,
) -> dict:
  """num_classes / class_names of the chosen `label`, the vocabulary and the attribute names."""
  del nuisance  # Changes pixels, not the description.
  _check(resolution, grid, min_objects, max_objects, label)
  class_names = {
    "shape": list(txt.SHAPES),
    "colour": list(txt.COLOURS),
    "shape_colour": [f"{c} {s}" for s in txt.SHAPES for c in txt.COLOURS],
  }[label]
  return {
    "num_classes": len(class_names),
    "class_names": class_names,
    "label": label,
    "image_shape": (resolution, resolution, 3),
    "sizes": dict(zip(SPLITS, (num_train, num_val, num_test, num_heldout), strict=True)),
    "vocab": list(txt.VOCAB),
    "pad_id": txt.PAD_ID,
    "bos_id": txt.BOS_ID,
    "eos_id": txt.EOS_ID,
    "unk_id": txt.UNK_ID,
    "shape_names": list(txt.SHAPES),
    "colour_names": list(txt.COLOURS),
    "size_names": list(txt.SIZES),
    "position_names": list(txt.POSITIONS[grid]),
    "question_types": list(txt.QUESTION_TYPES),
    "heldout_combinations": [
      (txt.SHAPES[s], txt.COLOURS[c]) for s, c in heldout_combinations(seed, heldout_fraction)
    ],
    "max_objects": max_objects,
    "grid": grid,
    "caption_length": txt.caption_length(max_objects),
    "question_length": txt.QUESTION_LENGTH,
    "answer_length": txt.ANSWER_LENGTH,
  }


@register("shapes", splits=SPLITS, info=info)
def build(
  split: str,
  data_dir: str,
  *,
  resolution: int = 32,
  grid: int = 3,
  min_objects: int = 1,
  max_objects: int = 2,
  label: str = "shape_colour",
  seed: int = 0,
  heldout_fraction: float = 0.1,
  nuisance: float = 1.0,
  num_train: int = 20_000,
  num_val: int = 2_000,
  num_test: int = 2_000,
  num_heldout: int = 2_000,
) -> dict[str, np.ndarray]:
  """One split of scenes.

  Args:
    resolution: image side in pixels (32 or 64; any multiple of `grid` pixels works).
    grid: 2 or 3 cells a side, the positions captions name.
    min_objects, max_objects: objects per scene, 1 <= min <= max <= 4 (and <= grid**2).
    label: the 'label' field: the first object's (in reading order) 'shape', 'colour' or
      'shape_colour' (shape * 6 + colour).
    seed: draws everything, the held-out combinations included.
    heldout_fraction: of the 30 (shape, colour) combinations.
    nuisance: scales background texture, colour jitter and pixel noise (0 = none).
    num_train, num_val, num_test, num_heldout: split sizes.

  Returns:
    'image', 'clean' (uint8), 'label', per-object 'shape',
    'colour', 'size', 'pos' ([N, max_objects], -1 where absent), 'offset' ([N, max_objects, 2]
    sub-cell jitter in cell units), 'n_objects', 'caption', 'question', 'answer' (token ids) and
    'question_type' (an index into `info()['question_types']`).
  """
  del data_dir  # Made here, nothing to read.
  _check(resolution, grid, min_objects, max_objects, label)
  sizes = dict(zip(SPLITS, (num_train, num_val, num_test, num_heldout), strict=True))
  heldout = heldout_combinations(seed, heldout_fraction)
  all_pairs = [(s, c) for s in range(len(txt.SHAPES)) for c in range(len(txt.COLOURS))]
  pairs = heldout if split == "heldout" else sorted(set(all_pairs) - set(heldout))
  if not pairs:
    raise DataError(f"shapes: split {split!r} has no (shape, colour) combinations to draw from")
  split_id = SPLITS.index(split)
  rng = lambda stream: np.random.default_rng([seed % 2**64, split_id, stream])
  attrs = sample_attributes(rng(0), sizes[split], pairs, grid, min_objects, max_objects)
  image, clean = _render_split(rng(1), attrs, resolution, grid, nuisance)
  text = _text(rng(2), attrs, pairs, grid, max_objects)
  first = {"shape": attrs["shape"][:, 0], "colour": attrs["colour"][:, 0]}
  first["shape_colour"] = first["shape"] * len(txt.COLOURS) + first["colour"]
  return {"image": image, "clean": clean, "label": first[label].astype(np.int32), **attrs, **text}


def sample_attributes(
  rng: np.random.Generator,
  n: int,
  pairs: Sequence[tuple[int, int]],
  grid: int,
  min_objects: int,
  max_objects: int,
) -> dict[str, np.ndarray]:
  """Scenes as attribute arrays [n, max_objects] (-1 where absent), objects in reading order."""
  n_objects = rng.integers(min_objects, max_objects + 1, n)
  present = np.arange(max_objects)[None, :] < n_objects[:, None]
  cells = np.argsort(rng.random((n, grid * grid)), axis=1)[:, :max_objects]  # Distinct cells.
  pos = np.sort(np.where(present, cells, grid * grid), axis=1)  # Reading order, absent last.
  pair = np.asarray(pairs)[rng.integers(len(pairs), size=(n, max_objects))]
  size = rng.integers(len(txt.SIZES), size=(n, max_objects))
  limit = rnd.jitter_limit(size)[..., None]
  offset = (rng.uniform(-1.0, 1.0, (n, max_objects, 2)) * limit).astype(np.float32)
  absent = lambda a: np.where(present, a, -1).astype(np.int32)
  return {
    "shape": absent(pair[..., 0]),
    "colour": absent(pair[..., 1]),
    "size": absent(size),
    "pos": absent(pos),
    "offset": np.where(present[..., None], offset, 0.0).astype(np.float32),
    "n_objects": n_objects.astype(np.int32),
  }


def render(
  attributes: dict[str, np.ndarray] | Sequence[Sequence[Sequence]],
  *,
  resolution: int = 32,
  grid: int = 3,
) -> np.ndarray:
  """Clean scenes float32 [N, H, W, 3] in [0, 1] from attributes, e.g. for a judge of generations.

  Args:
    attributes: either arrays as in the data set ('shape', 'colour', 'size', 'pos' [N, K], -1
      where absent, optional 'offset' [N, K, 2]; with the offsets this reproduces 'clean'
      exactly), or a list of scenes, each a list of (shape, colour, size, position) tuples of
      names ('circle', 'red', 'small', 'top left') or indices, drawn at their cell centres.
  """
  if not isinstance(attributes, dict):
    attributes = attributes_from_tuples(attributes, grid)
  shape = np.asarray(attributes["shape"])
  offset = attributes.get("offset")
  offset = np.zeros((*shape.shape, 2), np.float32) if offset is None else np.asarray(offset)
  args = [np.asarray(attributes[k]) for k in ATTRIBUTES]
  clean = rnd.clean_scenes(*args, offset, resolution=resolution, grid=grid)
  return clean.astype(np.float32) / np.float32(255.0)


def attributes_from_tuples(scenes: Sequence[Sequence[Sequence]], grid: int = 3) -> dict:
  """[[(shape, colour, size, position), ...], ...] (names or indices) -> attribute arrays."""
  names = (txt.SHAPES, txt.COLOURS, txt.SIZES, txt.POSITIONS[grid])
  k = max(1, max((len(s) for s in scenes), default=1))
  out = {a: np.full((len(scenes), k), -1, np.int32) for a in ATTRIBUTES}
  for i, scene in enumerate(scenes):
    for j, obj in enumerate(scene):
      for a, vocab, value in zip(ATTRIBUTES, names, obj, strict=True):
        if isinstance(value, str):
          if value not in vocab:
            raise DataError(f"shapes: unknown {a} {value!r}; expected one of {list(vocab)}")
          value = vocab.index(value)
        out[a][i, j] = value
  return out


def _render_split(rng, attrs, resolution, grid, nuisance):
  n = len(attrs["shape"])
  image = np.empty((n, resolution, resolution, 3), np.uint8)
  clean = np.empty_like(image)
  args = [attrs[k] for k in (*ATTRIBUTES, "offset")]
  for lo in range(0, n, CHUNK):
    part = [a[lo : lo + CHUNK] for a in args]
    image[lo : lo + CHUNK], clean[lo : lo + CHUNK] = rnd.render_pair(
      rng, *part, resolution=resolution, grid=grid, strength=nuisance
    )
  return image, clean


def _text(rng, attrs, pairs, grid, max_objects) -> dict[str, np.ndarray]:
  """Captions and one question-answer pair per scene, as token ids."""
  n = len(attrs["shape"])
  kinds = rng.integers(len(txt.QUESTION_TYPES), size=n)
  picks = (rng.random(n) * attrs["n_objects"]).astype(int)
  absent_pair = np.asarray(pairs)[rng.integers(len(pairs), size=n)]
  ask_absent = rng.random(n) < 0.5
  table = np.stack([attrs[k] for k in ATTRIBUTES], axis=-1).tolist()  # [n, K, 4]
  length = txt.caption_length(max_objects)
  caption = np.empty((n, length), np.int32)
  question = np.empty((n, txt.QUESTION_LENGTH), np.int32)
  answer = np.empty((n, txt.ANSWER_LENGTH), np.int32)
  kind_out = np.empty(n, np.int32)
  for i in range(n):
    objects = [tuple(o) for o in table[i][: attrs["n_objects"][i]]]
    caption[i] = txt.encode(txt.caption(objects, grid), length)
    absent = tuple(absent_pair[i]) if ask_absent[i] else None
    q, a = txt.question_answer(objects, int(kinds[i]), int(picks[i]), absent, grid)
    question[i] = txt.encode(q, txt.QUESTION_LENGTH)
    answer[i] = txt.encode(a, txt.ANSWER_LENGTH)
    kind_out[i] = txt.QUESTION_TYPES.index(_kind_of(q))
  return {"caption": caption, "question": question, "answer": answer, "question_type": kind_out}


def _kind_of(question: str) -> str:
  """The type of a templated question (a fallback may have changed the one drawn)."""
  starts = {"how": "count", "where": "where", "is": "exists"}
  first, second = question.split()[:2]
  return starts.get(first) or second  # 'what colour|shape|size ...'


def _check(resolution, grid, min_objects, max_objects, label) -> None:
  if grid not in txt.POSITIONS:
    raise DataError(f"shapes: grid must be one of {sorted(txt.POSITIONS)}, got {grid}")
  if not 1 <= min_objects <= max_objects <= min(txt.MAX_OBJECTS, grid * grid):
    raise DataError(
      f"shapes: need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects}) <= "
      f"{min(txt.MAX_OBJECTS, grid * grid)}"
    )
  if label not in LABELS:
    raise DataError(f"shapes: label must be one of {list(LABELS)}, got {label!r}")
  if resolution < 8 * grid:
    raise DataError(f"shapes: resolution {resolution} is too small for a {grid}x{grid} grid")
