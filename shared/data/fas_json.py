"""`fas_json`: real face anti-spoofing frames listed in SSDG-style JSON label files.

The format SSDG / SSAN / SA-FAS users have: one JSON list per domain and split,

    [{"photo_path": "/data/msu/real/client001_frame0.png", "photo_label": 1,
      "photo_belong_to_video_ID": "client001"}, ...]

with `photo_label` 1 = live (bona fide), 0 = spoof, frames already face-cropped (MTCNN). The files
are found by `pattern`, default "{root}/{domain}/{split}_label.json", for each name in `domains`
(e.g. oulu, casia, replay, msu). Relative photo paths are taken from `image_root` when given,
else from the JSON file's folder. When a domain has no val list, val is a seeded `val_fraction`
of its train list, split by video (photo_belong_to_video_ID) when the entries name one.

A `photo_path` may also name a video's folder of frames (SSAN / FLIP-style lists): its image
files (.png, .jpg, .jpeg, .bmp), sorted by name, are the video's frames, `frames_per_video` of
them evenly spaced (0 = all), one row each, all with the entry's label and video id (the
folder's path when the entry names none). A folder with no frames is an error.

Photo paths stay inside the data: an entry (relative with `..`, or absolute) that resolves
outside `root`, `image_root` and the list's own folder is refused, unless `allow_outside_root`
says the lists may point anywhere (e.g. SSDG lists with absolute paths of another data disk).

Every problem is a DataError naming the file and the entry: a missing list, a list that is not a
list of objects, a missing key, a photo path that is not a non-empty string or leaves the data
root, a label other than 0/1, a missing or unreadable image, a video folder with no frames, a
video with both live and spoof frames, an empty split, a malformed pattern.
"""

from __future__ import annotations

import json
import os

import numpy as np

from shared.data.registry import register
from shared.errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_DOMAINS = ("oulu", "casia", "replay", "msu")
DEFAULT_PATTERN = "{root}/{domain}/{split}_label.json"


def info(
  root: str = "",
  domains: tuple[str, ...] = DEFAULT_DOMAINS,
  image_size: int = 224,
  pattern: str = DEFAULT_PATTERN,
  image_root: str = "",
  val_fraction: float = 0.1,
  seed: int = 0,
  allow_outside_root: bool = False,
  frames_per_video: int = 0,
) -> dict:
  """Classes (0 spoof, 1 live), image shape and the domain names; sizes are known after loading."""
  del root, pattern, image_root, val_fraction, seed, allow_outside_root, frames_per_video
  return {
    "num_classes": 2,
    "class_names": ["spoof", "live"],
    "image_shape": (image_size, image_size, 3),
    "domains": list(domains),
    "attacks": ["live", "spoof"],
  }


# Not cached: the lists and frames are the user's and may change between runs.
@register("fas_json", splits=SPLITS, info=info, cache=False)
def build(
  split: str,
  data_dir: str,
  *,
  root: str = "",
  domains: tuple[str, ...] = DEFAULT_DOMAINS,
  image_size: int = 224,
  pattern: str = DEFAULT_PATTERN,
  image_root: str = "",
  val_fraction: float = 0.1,
  seed: int = 0,
  allow_outside_root: bool = False,
  frames_per_video: int = 0,
) -> dict[str, np.ndarray]:
  """All domains' frames of one split, resized to `image_size` squares.

  Args:
    root: the folder the pattern's {root} stands for; defaults to `data_dir`/fas_json.
    domains: domain names, in the order of the 'domain' field.
    image_size: output side in pixels (bilinear resize of each crop).
    pattern: where a list lives, with {root}, {domain} and {split}.
    image_root: base folder for relative photo paths (default: the list's folder).
    val_fraction: of the train list, by video, used as val when there is no val list.
    seed: draws that val part.
    allow_outside_root: read photo paths outside `root` / `image_root` / the list's folder.
    frames_per_video: frames read from a video folder entry, evenly spaced; 0 = all.

  Returns:
    'image' uint8 [N, size, size, 3], 'label' (1 live, 0 spoof), 'attack' (0 live, 1 spoof),
    'domain' (index into `domains`), 'video' (an int per video within each domain).
  """
  root = root or os.path.join(data_dir, "fas_json")
  if isinstance(domains, str):
    domains = tuple(d for d in domains.split("+") if d)
  if not domains:
    raise DataError("fas_json: no domains given")
  _check_pattern(pattern, len(domains))
  if (
    isinstance(frames_per_video, bool)
    or not isinstance(frames_per_video, int)
    or (frames_per_video < 0)
  ):
    raise DataError(f"fas_json: frames_per_video must be an integer >= 0, got {frames_per_video!r}")
  parts = []
  for d, domain in enumerate(domains):
    entries, where, list_file = _split_entries(split, root, domain, pattern, val_fraction, seed)
    if not entries:
      raise DataError(f"fas_json: {where} has no entries for split {split!r} (an empty split)")
    list_dir = os.path.dirname(os.path.abspath(list_file))
    base = image_root or list_dir
    allowed = None if allow_outside_root else [p for p in (root, image_root, list_dir) if p]
    parts.append(_read(entries, where, base, image_size, d, allowed, frames_per_video))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def list_path(root: str, domain: str, split: str, pattern: str = DEFAULT_PATTERN) -> str:
  try:
    return pattern.format(root=root, domain=domain, split=split)
  except (KeyError, IndexError, ValueError, AttributeError) as e:
    raise DataError(
      f"fas_json: pattern {pattern!r} is malformed ({type(e).__name__}: {e}); it may use "
      "{root}, {domain} and {split}, e.g. " + repr(DEFAULT_PATTERN)
    ) from None


def _check_pattern(pattern: str, num_domains: int) -> None:
  if not isinstance(pattern, str):
    raise DataError(f"fas_json: pattern must be a string, got {pattern!r}")
  first = list_path("r", "d", "s", pattern)  # raises on a malformed pattern
  if first == list_path("r", "d", "t", pattern):
    raise DataError(
      f"fas_json: pattern {pattern!r} has no {{split}}: every split would be one list"
    )
  if num_domains > 1 and first == list_path("r", "e", "s", pattern):
    raise DataError(
      f"fas_json: pattern {pattern!r} has no {{domain}}: every domain would be one list"
    )


def _inside(path: str, folders: list[str]) -> bool:
  """Whether `path` lies in one of `folders`, lexically (`..` resolved, symlinks trusted)."""
  target = os.path.normpath(os.path.abspath(path))
  for folder in folders:
    base = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([target, base]) == base:
      return True
  return False


def read_list(path: str) -> list[dict]:
  """A JSON label list, checked for shape: a list of objects with photo_path and photo_label."""
  if not os.path.exists(path):
    raise DataError(f"fas_json: label list {path} does not exist")
  try:
    with open(path) as f:
      entries = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"fas_json: {path} is not readable JSON ({e})") from None
  if not isinstance(entries, list):
    raise DataError(
      f"fas_json: {path} must hold a JSON list of entries, got {type(entries).__name__}"
    )
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise DataError(f"fas_json: {path} entry {i} is not an object: {entry!r:.80}")
    for key in ("photo_path", "photo_label"):
      if key not in entry:
        raise DataError(f"fas_json: {path} entry {i} has no {key!r} (keys: {sorted(entry)})")
    photo = entry["photo_path"]
    if not isinstance(photo, str) or not photo.strip() or "\0" in photo:
      raise DataError(
        f"fas_json: {path} entry {i}: photo_path must be a non-empty path string, got {photo!r:.80}"
      )
    label = entry["photo_label"]
    if isinstance(label, bool) or label not in (0, 1):
      raise DataError(
        f"fas_json: {path} entry {i} ({entry['photo_path']}): photo_label must be 1 (live) "
        f"or 0 (spoof), got {label!r}"
      )
  return entries


def _split_entries(split, root, domain, pattern, val_fraction, seed):
  """(entries of `split` for `domain`, how to name them in messages, the list file they are in)."""
  path = list_path(root, domain, split, pattern)
  if split != "val" or os.path.exists(path):
    if split == "train" and not os.path.exists(list_path(root, domain, "val", pattern)):
      entries = read_list(path)
      return [entries[i] for i in _carve(entries, val_fraction, seed, keep="train")], path, path
    return read_list(path), path, path
  train_path = list_path(root, domain, "train", pattern)
  entries = read_list(train_path)
  rows = _carve(entries, val_fraction, seed, keep="val")
  return [entries[i] for i in rows], f"{train_path} (val part)", train_path


def _carve(entries, val_fraction, seed, keep):
  """Row indices of the train or val part of a train list, split by video when known."""
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f"fas_json: val_fraction must be in [0, 1), got {val_fraction}")
  videos = [str(e.get("photo_belong_to_video_ID", i)) for i, e in enumerate(entries)]
  unique = sorted(set(videos))
  order = np.random.default_rng([seed % 2**64, len(unique)]).permutation(len(unique))
  n_val = int(round(val_fraction * len(unique)))
  val_videos = {unique[i] for i in order[:n_val]}
  return [i for i, v in enumerate(videos) if (v in val_videos) == (keep == "val")]


FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _frames(full: str, where: str, i: int, frames_per_video: int) -> list[str]:
  """The frame files an entry names: the image itself, or a video folder's frames."""
  if not os.path.isdir(full):
    return [full]
  names = sorted(n for n in os.listdir(full) if n.lower().endswith(FRAME_EXTENSIONS))
  if not names:
    raise DataError(
      f"fas_json: {where} entry {i}: video folder {full} has no frames "
      f"(no {' / '.join(FRAME_EXTENSIONS)} files)"
    )
  if frames_per_video and len(names) > frames_per_video:
    names = [names[j] for j in np.linspace(0, len(names) - 1, frames_per_video).round().astype(int)]
  return [os.path.join(full, n) for n in names]


def _read(entries, where, base, image_size, domain, allowed=None, frames_per_video=0):
  from PIL import Image, UnidentifiedImageError

  images, labels, videos = [], [], []
  video_ids: dict[str, int] = {}
  video_labels: dict[int, int] = {}
  for i, entry in enumerate(entries):
    path = entry["photo_path"]
    full = path if os.path.isabs(path) else os.path.join(base, path)
    if allowed is not None and not _inside(full, allowed):
      raise DataError(
        f"fas_json: {where} entry {i}: photo_path {path!r} points outside the data root "
        f"({', '.join(allowed)}); set the data option allow_outside_root=True to read it anyway"
      )
    if not os.path.exists(full):
      raise DataError(f"fas_json: {where} entry {i}: image {full} does not exist")
    name = str(entry.get("photo_belong_to_video_ID", path))
    video = video_ids.setdefault(name, len(video_ids))
    if video_labels.setdefault(video, entry["photo_label"]) != entry["photo_label"]:
      raise DataError(
        f"fas_json: {where} entry {i}: video {name!r} has both live and spoof frames "
        "(photo_label differs within one photo_belong_to_video_ID)"
      )
    for frame in _frames(full, where, i, frames_per_video):
      try:
        with Image.open(frame) as im:
          rgb = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
      except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"fas_json: {where} entry {i}: cannot read image {frame} ({e})") from None
      images.append(np.asarray(rgb, np.uint8))
      labels.append(int(entry["photo_label"]))
      videos.append(video)
  n = len(images)
  images = np.stack(images) if n else np.zeros((0, image_size, image_size, 3), np.uint8)
  labels, videos = np.asarray(labels, np.int32), np.asarray(videos, np.int32)
  return {
    "image": images,
    "label": labels,
    "attack": (1 - labels).astype(np.int32),
    "domain": np.full(n, domain, np.int32),
    "video": videos,
  }
