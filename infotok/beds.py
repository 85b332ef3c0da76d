"""The test beds InfoTok runs on, told apart in this one place: `bed_of(config.data)`.

  shapes       procedural scenes (`shared.data.shapes`): per-object shape, colour, size and
               position, questions and answers, held-out attribute combinations; judged by the
               trained attribute judge (`infotok.judge`).
  cifar_grid   real CIFAR-10 photographs in a 2x2 grid (`shared.data.cifar_grid`): per-object
               class and position, questions and answers, held-out class pairs; judged by the
               shipped CIFAR-10 classifier per cell (`infotok.grid_bed`).
  tfds:<name>  an image-caption set (`infotok.captions`): captions only, judged by retrieval.

`config.data.name` names the bed (`configs/infotok.py` sets it from `bed=` and `captions=`);
any other name is a ConfigError (`checks.check_config` asks first, before any data is read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from shared.data import cifar_grid, shapes
from shared.errors import ConfigError

# Cheap to import (no JAX, no judge): configs/infotok.py takes its `bed=` names from `BEDS`.

CAPTION_PREFIX = "tfds:"  # data.name of an image-caption set


def shapes_objects(arrays, i: int, grid: int) -> list[tuple[str, str, str, str]]:
  """Ground-truth objects of `shapes` scene i as (shape, colour, size, position) names, reading
  order."""
  out = []
  for k in range(arrays["shape"].shape[1]):
    s = int(arrays["shape"][i, k])
    if s < 0:
      continue
    out.append(
      (
        shapes.txt.SHAPES[s],
        shapes.txt.COLOURS[int(arrays["colour"][i, k])],
        shapes.txt.SIZES[int(arrays["size"][i, k])],
        shapes.txt.POSITIONS[grid][int(arrays["pos"][i, k])],
      )
    )
  return out


GRID_ATTRS = ("class", "position")  # what a `cifar_grid` caption names per object


def grid_objects(arrays, i: int, grid: int | None = None) -> list[tuple[str, str]]:
  """Ground-truth objects of `cifar_grid` scene i as (class, position) names, in reading order
  (the grid is fixed: 2x2)."""
  out = []
  for c, p in zip(arrays["cls"][i], arrays["pos"][i], strict=True):
    if c >= 0:
      out.append((cifar_grid.CLASSES[int(c)], cifar_grid.POSITIONS[int(p)]))
  return out


def scene_options(cfg) -> dict:
  """What a `shapes` scene looks like (`config.data`): the options `inputs.load_data` builds the
  splits with and the judge's fresh renders (`judge.render_scenes`) share."""
  return dict(
    resolution=cfg.resolution,
    grid=cfg.grid,
    min_objects=cfg.min_objects,
    max_objects=cfg.max_objects,
    nuisance=cfg.nuisance,
  )


def grid_options(cfg) -> dict:
  """What a `cifar_grid` scene holds (`config.data`; the grid, cells and images are fixed)."""
  return dict(min_objects=cfg.min_objects, max_objects=cfg.max_objects)


@dataclasses.dataclass(frozen=True)
class Bed:
  """What differs between beds. On an image-caption set (`captions`) the scene fields are
  empty: it has no per-object attributes, questions or held-out combinations.

  Attributes:
    name: the bed's `config.data.name` ('captions' for every image-caption set).
    captions: an image-caption set (`infotok.captions` reads and judges it).
    attrs: the attributes a caption names per object, in `objects_of` order.
    question_types: the VQA question kinds ('question_type' indexes them).
    objects_of: (arrays, i, grid) -> scene i's objects as attribute names, reading order.
    parse_caption: (text, grid) -> the objects a caption names, or None when it does not parse.
    decode: the bed's own word ids (its 'caption', 'question', 'answer' arrays) -> texts.
    options: config.data -> the scene options of `shared.data.load`.
  """

  name: str
  captions: bool = False
  attrs: tuple[str, ...] = ()
  question_types: tuple[str, ...] = ()
  objects_of: Callable | None = None
  parse_caption: Callable | None = None
  decode: Callable | None = None
  options: Callable | None = None


SHAPES = Bed(
  name="shapes",
  attrs=("shape", "colour", "size", "position"),
  question_types=tuple(shapes.txt.QUESTION_TYPES),
  objects_of=shapes_objects,
  parse_caption=shapes.parse_caption,
  decode=shapes.decode,
  options=scene_options,
)
CIFAR_GRID = Bed(
  name="cifar_grid",
  attrs=GRID_ATTRS,
  question_types=tuple(cifar_grid.QUESTION_TYPES),
  objects_of=grid_objects,
  parse_caption=lambda text, grid: cifar_grid.parse_caption(text),
  decode=cifar_grid.decode,
  options=grid_options,
)
CAPTIONS = Bed(name="captions", captions=True)
BEDS = {bed.name: bed for bed in (SHAPES, CIFAR_GRID)}  # the built-in scenes, by data.name


def bed_of(data_cfg) -> Bed:
  """The bed `config.data` names; a ConfigError (one line) for a name that is none."""
  name = data_cfg.name
  if name in BEDS:
    return BEDS[name]
  if isinstance(name, str) and name.startswith(CAPTION_PREFIX) and len(name) > len(CAPTION_PREFIX):
    return CAPTIONS
  raise ConfigError(
    f"config.data.name={name!r} is not an InfoTok bed (InfoTok needs captions): known: "
    f"{', '.join(BEDS)} or an image-caption TFDS set '{CAPTION_PREFIX}<name>'"
  )
