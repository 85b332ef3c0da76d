"""`fas_proxy`: simulated presentation attacks (face anti-spoofing) over 4 capture domains.

Real FAS sets (OULU-NPU, CASIA-FASD, Replay-Attack, MSU-MFSD) are licence-restricted, so the
default MCAE job runs on this proxy. Every image is a bona fide *content* (one of the 100 LFW face
crops scikit-image ships, colourised with a skin tone, or a crop of one of its colour photos)
that is either captured directly (live) or first reproduced by an attack medium and then
recaptured (spoof):

- print: gamut compression (saturation loss, raised black and lowered white level), an AM
  halftone screen (per-channel dot pattern at a screen frequency and angle), paper texture.
- replay: screen gamma and colour cast, backlight leak (raised black level), moire (interference
  of the screen's pixel grid with the camera's, a sinusoidal grating), specular glare.

Each domain is a camera: its own white balance, exposure, optical blur, sensor noise, resolution
and JPEG quality, applied to live and spoof alike. Each domain also draws the attack artefact
parameters from its own band, and the four bands of every parameter are disjoint: whichever
domain is held out, its artefacts were never seen in the sources (FAS-Aug / SARE warn that models
over-fit artefact specifics). Bands are assigned per parameter by different permutations, so no
domain is the extreme one everywhere.

Content is disjoint across domains and splits: domain d owns 25 faces (15 train, 4 val, 6 test)
and 7 photo regions (4 / 1 / 2). Everything is drawn from `seed`, so a build is deterministic.
Labels: 'label' 1 = live, 0 = spoof (the FAS convention); 'attack' 0 live, 1 print, 2 replay;
'domain' 0..3; 'subject' the content id (face index, or 100 + photo region).
"""

from __future__ import annotations

import io

import numpy as np

from shared.data.registry import register
from shared.errors import DataError

SPLITS = ("train", "val", "test")
DOMAINS = ("d0", "d1", "d2", "d3")
ATTACKS = ("live", "print", "replay")
NUM_FACES = 100
FACES_PER_SPLIT = {"train": 15, "val": 4, "test": 6}  # per domain: 25 faces
REGIONS_PER_SPLIT = {"train": 4, "val": 1, "test": 2}  # per domain: 7 photo regions
PHOTOS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "hubble_deep_field",
  "retina",
  "immunohistochemistry",
)

# Camera models (applied to every image of the domain). resolution: fraction of the output side
# the sensor samples (then resized back); blur: optical sigma in render pixels; noise: sensor
# sigma; jpeg: quality; wb: RGB gains; exposure: global gain.
CAMERAS = (
  dict(resolution=1.0, blur=0.5, noise=0.008, jpeg=92, wb=(1.08, 1.0, 0.86), exposure=1.0),
  dict(resolution=0.75, blur=0.8, noise=0.02, jpeg=70, wb=(0.88, 1.0, 1.12), exposure=1.08),
  dict(resolution=0.875, blur=0.6, noise=0.03, jpeg=55, wb=(0.98, 1.07, 0.93), exposure=0.9),
  dict(resolution=0.625, blur=1.0, noise=0.015, jpeg=80, wb=(1.12, 0.96, 0.98), exposure=1.0),
)

# Attack artefact parameters: (low, high) split into 4 disjoint bands (with gaps); `order[d]` is
# the band of domain d. Frequencies are in cycles per image side.
ARTEFACTS = {
  "halftone_freq": ((9.0, 21.0), (0, 1, 2, 3)),
  "halftone_angle": ((0.0, 44.0), (2, 0, 3, 1)),
  "halftone_mix": ((0.3, 0.7), (1, 3, 0, 2)),
  "paper_texture": ((0.02, 0.10), (3, 2, 1, 0)),
  "print_saturation": ((0.45, 0.85), (1, 0, 3, 2)),
  "print_black": ((0.03, 0.15), (2, 3, 0, 1)),
  "print_white": ((0.78, 0.96), (0, 2, 1, 3)),
  "moire_freq": ((5.0, 17.0), (3, 1, 0, 2)),
  "moire_angle": ((0.0, 88.0), (0, 3, 1, 2)),
  "moire_amplitude": ((0.05, 0.17), (2, 0, 1, 3)),
  "screen_gamma": ((0.6, 1.4), (1, 2, 3, 0)),
  "screen_blue": ((1.0, 1.16), (3, 0, 2, 1)),
  "backlight": ((0.03, 0.15), (0, 1, 3, 2)),
  "glare": ((0.1, 0.5), (2, 1, 0, 3)),
}
BAND_GAP = 0.15  # fraction of each band's width left empty on each side

SKIN_TONES = np.array(
  [
    [0.98, 0.82, 0.70],
    [0.93, 0.74, 0.60],
    [0.80, 0.60, 0.46],
    [0.62, 0.44, 0.32],
    [0.45, 0.31, 0.22],
  ]
)


def artefact_band(name: str, domain: int) -> tuple[float, float]:
  """The [low, high] range domain `domain` draws attack parameter `name` from."""
  (lo, hi), order = ARTEFACTS[name]
  width = (hi - lo) / 4
  start = lo + order[domain] * width
  return start + BAND_GAP * width, start + (1 - BAND_GAP) * width


def info(
  resolution: int = 32,
  num_train: int = 480,
  num_val: int = 120,
  num_test: int = 240,
  photo_fraction: float = 0.25,
  seed: int = 0,
) -> dict:
  """Classes (0 spoof, 1 live), image shape, domain and attack names, per-domain split sizes."""
  del photo_fraction, seed
  _check(resolution, num_train, num_val, num_test)
  return {
    "num_classes": 2,
    "class_names": ["spoof", "live"],
    "image_shape": (resolution, resolution, 3),
    "domains": list(DOMAINS),
    "attacks": list(ATTACKS),
    "sizes": {
      s: n * len(DOMAINS) for s, n in zip(SPLITS, (num_train, num_val, num_test), strict=True)
    },
    "sizes_per_domain": dict(zip(SPLITS, (num_train, num_val, num_test), strict=True)),
  }


@register("fas_proxy", splits=SPLITS, info=info)
def build(
  split: str,
  data_dir: str,
  *,
  resolution: int = 32,
  num_train: int = 480,
  num_val: int = 120,
  num_test: int = 240,
  photo_fraction: float = 0.25,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """One split of all four domains, domain after domain.

  Args:
    resolution: output side in pixels (a multiple of 4, >= 16); artefacts are rendered at twice it.
    num_train, num_val, num_test: images per domain in each split; a third live, a third print,
      a third replay (the remainder goes to live).
    photo_fraction: share of contents that are natural-photo crops rather than faces.
    seed: draws the content partition and every rendering parameter.

  Returns:
    'image' uint8 [N, res, res, 3], 'label', 'attack', 'domain', 'subject'.
  """
  del data_dir  # Made from scikit-image's shipped images; nothing to read.
  _check(resolution, num_train, num_val, num_test)
  if not 0.0 <= photo_fraction <= 1.0:
    raise DataError(f"fas_proxy: photo_fraction must be in [0, 1], got {photo_fraction}")
  n = dict(zip(SPLITS, (num_train, num_val, num_test), strict=True))[split]
  faces, photos = _sources()
  face_ids, regions = _partition(seed, len(photos))
  parts = []
  for d in range(len(DOMAINS)):
    rng = np.random.default_rng([seed % 2**64, d, SPLITS.index(split)])
    parts.append(
      _render_domain(
        rng, d, n, resolution, faces, photos, face_ids[d][split], regions[d][split], photo_fraction
      )
    )
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check(resolution, num_train, num_val, num_test):
  if resolution < 16 or resolution % 4:
    raise DataError(f"fas_proxy: resolution must be a multiple of 4 and >= 16, got {resolution}")
  for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
    if value < 3:
      raise DataError(f"fas_proxy: {name} must be >= 3 (one live, print, replay), got {value}")


def _sources() -> tuple[np.ndarray, list[np.ndarray]]:
  """The 100 LFW face crops (25x25 grey, [0, 1]) and the colour photos (float [0, 1])."""
  from skimage import data as skdata  # Imported here: scikit-image is slow to import.

  faces = np.asarray(skdata.lfw_subset()[:NUM_FACES], np.float64)  # the first 100 are faces
  photos = [np.asarray(getattr(skdata, name)()[..., :3], np.float64) / 255.0 for name in PHOTOS]
  return faces, photos


def _partition(seed: int, n_photos: int):
  """Per domain and split: the face indices and the photo regions (photo, quadrant) it owns."""
  rng = np.random.default_rng([seed % 2**64, 12345])
  face_order = rng.permutation(NUM_FACES)
  region_order = rng.permutation(n_photos * 4)
  faces, regions = [], []
  per_domain_f, per_domain_r = sum(FACES_PER_SPLIT.values()), sum(REGIONS_PER_SPLIT.values())
  for d in range(len(DOMAINS)):
    f = face_order[d * per_domain_f : (d + 1) * per_domain_f]
    r = region_order[d * per_domain_r : (d + 1) * per_domain_r]
    fs, rs, i, j = {}, {}, 0, 0
    for split in SPLITS:
      fs[split] = f[i : i + FACES_PER_SPLIT[split]]
      rs[split] = r[j : j + REGIONS_PER_SPLIT[split]]
      i, j = i + FACES_PER_SPLIT[split], j + REGIONS_PER_SPLIT[split]
    faces.append(fs)
    regions.append(rs)
  return faces, regions


def _render_domain(rng, domain, n, resolution, faces, photos, face_ids, regions, photo_fraction):
  render = 2 * resolution
  attack = np.arange(n) % 3  # balanced: live, print, replay in turn
  images = np.zeros((n, resolution, resolution, 3), np.uint8)
  subject = np.zeros(n, np.int32)
  for i in range(n):
    if rng.random() < photo_fraction:
      region = int(regions[rng.integers(len(regions))])
      content = _photo_crop(rng, photos, region, render)
      subject[i] = NUM_FACES + region
    else:
      face = int(face_ids[rng.integers(len(face_ids))])
      content = _face(rng, faces[face], render)
      subject[i] = face
    if attack[i] == 1:
      content = print_attack(rng, content, domain)
    elif attack[i] == 2:
      content = replay_attack(rng, content, domain)
    images[i] = camera(rng, content, domain, resolution)
  return {
    "image": images,
    "label": (attack == 0).astype(np.int32),
    "attack": attack.astype(np.int32),
    "domain": np.full(n, domain, np.int32),
    "subject": subject,
  }


# ----------------------------------------------------------------------------------------------
# Contents.


def _resize(image: np.ndarray, size: int, anti_aliasing: bool = True) -> np.ndarray:
  from skimage.transform import resize

  return resize(image, (size, size), order=1, anti_aliasing=anti_aliasing, mode="edge")


def _face(rng, face_25x25: np.ndarray, render: int) -> np.ndarray:
  """A colourised, jittered face crop at the render size (luminance kept, skin-tone chroma)."""
  side = face_25x25.shape[0]
  crop = int(rng.integers(side - 4, side + 1))
  y, x = rng.integers(0, side - crop + 1, 2)
  grey = face_25x25[y : y + crop, x : x + crop]
  if rng.random() < 0.5:
    grey = grey[:, ::-1]
  grey = np.clip(grey * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08), 0.0, 1.0)
  tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.95, 1.05, 3)
  tone = tone / (tone @ np.array([0.299, 0.587, 0.114]))
  rgb = np.clip(grey[..., None] * tone, 0.0, 1.0)
  return _resize(rgb, render)


def _photo_crop(rng, photos, region: int, render: int) -> np.ndarray:
  """A square crop inside quadrant `region % 4` of photo `region // 4`."""
  photo = photos[region // 4]
  h, w = photo.shape[0] // 2, photo.shape[1] // 2
  y0, x0 = (region % 4 // 2) * h, (region % 4 % 2) * w
  size = int(rng.uniform(0.3, 0.9) * min(h, w))
  y = y0 + int(rng.integers(0, h - size + 1))
  x = x0 + int(rng.integers(0, w - size + 1))
  crop = photo[y : y + size, x : x + size]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return _resize(crop, render)


# ----------------------------------------------------------------------------------------------
# Attacks (on the content at the render size, float RGB in [0, 1]).


def _draw(rng, name: str, domain: int) -> float:
  return float(rng.uniform(*artefact_band(name, domain)))


def _grid(size: int):
  coords = (np.arange(size) + 0.5) / size  # in image sides
  return np.meshgrid(coords, coords, indexing="ij")


def print_attack(rng, image: np.ndarray, domain: int) -> np.ndarray:
  """A photo print: gamut compression, CMY halftone screen, paper texture."""
  from scipy.ndimage import gaussian_filter

  size = image.shape[0]
  grey = image.mean(axis=-1, keepdims=True)
  out = grey + _draw(rng, "print_saturation", domain) * (image - grey)
  black, white = _draw(rng, "print_black", domain), _draw(rng, "print_white", domain)
  out = black + (white - black) * out
  freq, angle = _draw(rng, "halftone_freq", domain), _draw(rng, "halftone_angle", domain)
  yy, xx = _grid(size)
  screened = np.empty_like(out)
  for c, offset in enumerate((15.0, 75.0, 0.0)):  # classic CMY screen angles, rotated together
    t = np.deg2rad(angle + offset)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    dots = 0.5 + 0.25 * (np.cos(2 * np.pi * freq * u) + np.cos(2 * np.pi * freq * v))
    # Ink coverage 1 - value; a dot is inked where the screen is below the coverage.
    screened[..., c] = 1.0 - (dots < (1.0 - out[..., c])).astype(np.float64)
  screened = gaussian_filter(screened, (0.5, 0.5, 0))  # ink spread
  mix = _draw(rng, "halftone_mix", domain)
  out = (1 - mix) * out + mix * screened
  fibres = gaussian_filter(rng.normal(size=(size, size)), 1.2)
  fibres /= fibres.std() + 1e-8
  out = out * (1.0 + _draw(rng, "paper_texture", domain) * fibres[..., None])
  return np.clip(out, 0.0, 1.0)


def replay_attack(rng, image: np.ndarray, domain: int) -> np.ndarray:
  """A screen replay: gamma and colour cast, backlight leak, moire, specular glare."""
  size = image.shape[0]
  out = image ** _draw(rng, "screen_gamma", domain)
  out = out * np.array([1.0, 1.0, _draw(rng, "screen_blue", domain)])
  leak = _draw(rng, "backlight", domain)
  out = leak + (1 - leak) * out
  yy, xx = _grid(size)
  freq, angle = _draw(rng, "moire_freq", domain), np.deg2rad(_draw(rng, "moire_angle", domain))
  phase = rng.uniform(0, 2 * np.pi)
  grating = np.cos(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
  out = out * (1.0 + _draw(rng, "moire_amplitude", domain) * grating[..., None])
  cy, cx = rng.uniform(0.1, 0.9, 2)
  radius = rng.uniform(0.12, 0.3)
  glare = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
  out = out + _draw(rng, "glare", domain) * glare[..., None]
  return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Camera.


def camera(rng, scene: np.ndarray, domain: int, resolution: int) -> np.ndarray:
  """The domain's capture of a scene: optics, sampling, white balance, noise, JPEG -> uint8."""
  from PIL import Image
  from scipy.ndimage import gaussian_filter

  cam = CAMERAS[domain]
  jitter = lambda scale: rng.uniform(1 - scale, 1 + scale)
  out = gaussian_filter(scene, (cam["blur"] * jitter(0.2),) * 2 + (0,))
  sensor = max(8, int(round(cam["resolution"] * resolution)))
  # Sampling without a further anti-aliasing filter: the optics are the filter, so fine screens
  # and gratings alias as they do on real sensors.
  out = _resize(out, sensor, anti_aliasing=False)
  wb = np.asarray(cam["wb"]) * rng.uniform(0.97, 1.03, 3)
  out = out * wb * cam["exposure"] * jitter(0.05)
  out = out + rng.normal(0.0, cam["noise"] * jitter(0.3), out.shape)
  out = _resize(np.clip(out, 0.0, 1.0), resolution, anti_aliasing=False)
  quality = int(np.clip(cam["jpeg"] + rng.integers(-5, 6), 5, 100))
  buffer = io.BytesIO()
  Image.fromarray(np.round(out * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.uint8)
