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
and JPEG quality, applied to live and spoof alike. By default (`shift="attack_and_camera"`) each
domain also draws the attack artefact parameters from its own band, the four bands of every
parameter disjoint (assigned by a different permutation per parameter): whichever domain is held
out, its artefacts were never seen in the sources (FAS-Aug / SARE warn that models over-fit
artefact specifics). `shift="camera"`: one shared range for all domains; only the cameras differ.

Frames come in videos: one content and one attack instance (parameters drawn once) seen in
`frames_per_video` frames that differ by a small motion and the camera's per-frame noise,
exposure and JPEG. 'video' numbers the videos within each domain; one attack type per video.

Content is disjoint across domains and splits: domain d owns 25 faces (15 train, 4 val, 6 test)
and 7 photo regions (4 / 1 / 2). Everything is drawn from `seed`, so a build is deterministic.
Labels: 'label' 1 = live, 0 = spoof (the FAS convention); 'attack' 0 live, 1 print, 2 replay;
'domain' 0..3; 'subject' the content id (face index, or 100 + photo region); 'video'.
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
SHIFTS = ("attack_and_camera", "camera")  # what differs between domains
PRINT_PARAMS = tuple(k for k in ARTEFACTS if k.startswith(("halftone", "paper", "print")))
REPLAY_PARAMS = tuple(k for k in ARTEFACTS if k not in PRINT_PARAMS)

SKIN_TONES = np.array(
  [
    [0.98, 0.82, 0.70],
    [0.93, 0.74, 0.60],
    [0.80, 0.60, 0.46],
    [0.62, 0.44, 0.32],
    [0.45, 0.31, 0.22],
  ]
)


def artefact_band(name: str, domain: int, shift: str = SHIFTS[0]) -> tuple[float, float]:
  """The [low, high] range domain `domain` draws attack parameter `name` from: its own band, or
  with `shift="camera"` the whole range, the same for every domain."""
  (lo, hi), order = ARTEFACTS[name]
  if shift == "camera":
    return lo, hi
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
  frames_per_video: int = 4,
  shift: str = SHIFTS[0],
) -> dict:
  """Classes (0 spoof, 1 live), image shape, domain and attack names, per-domain split sizes."""
  del photo_fraction, seed
  _check(resolution, num_train, num_val, num_test, frames_per_video, shift)
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


@register("fas_proxy", splits=SPLITS, info=info, version=2)
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
  frames_per_video: int = 4,
  shift: str = SHIFTS[0],
) -> dict[str, np.ndarray]:
  """One split of all four domains, domain after domain.

  Args:
    resolution: output side in pixels (a multiple of 4, >= 16); artefacts are rendered at twice it.
    num_train, num_val, num_test: images per domain in each split; a third live, a third print,
      a third replay (the remainder goes to live).
    photo_fraction: share of contents that are natural-photo crops rather than faces.
    seed: draws the content partition and every rendering parameter.
    frames_per_video: frames of each video (the last video of an attack type may have fewer).
    shift: "attack_and_camera" (each domain its own attack parameter bands and camera) or
      "camera" (one attack parameter range for all domains; only the cameras differ).

  Returns:
    'image' uint8 [N, res, res, 3], 'label', 'attack', 'domain', 'subject', 'video'.
  """
  del data_dir  # Made from scikit-image's shipped images; nothing to read.
  _check(resolution, num_train, num_val, num_test, frames_per_video, shift)
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
        rng,
        d,
        n,
        resolution,
        (faces, photos, face_ids[d][split], regions[d][split], photo_fraction),
        frames_per_video,
        shift,
      )
    )
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check(resolution, num_train, num_val, num_test, frames_per_video=1, shift=SHIFTS[0]):
  if shift not in SHIFTS:
    raise DataError(f"fas_proxy: shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
  if (
    isinstance(frames_per_video, bool)
    or not isinstance(frames_per_video, int)
    or (frames_per_video < 1)
  ):
    raise DataError(
      f"fas_proxy: frames_per_video must be an integer >= 1, got {frames_per_video!r}"
    )
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


def video_ids(n: int, frames_per_video: int) -> np.ndarray:
  """Video of each of `n` frames whose attack is `i % 3`: runs of `frames_per_video` frames of
  one attack type, so the thirds stay exactly as balanced as without videos."""
  i = np.arange(n)
  return (i % 3 + 3 * (i // (3 * frames_per_video))).astype(np.int32)


def _render_domain(rng, domain, n, resolution, contents, frames_per_video, shift):
  faces, photos, face_ids, regions, photo_fraction = contents
  render = 2 * resolution
  attack = np.arange(n) % 3  # balanced: live, print, replay in turn
  video = video_ids(n, frames_per_video)
  images = np.zeros((n, resolution, resolution, 3), np.uint8)
  subject = np.zeros(n, np.int32)
  scenes: dict[int, tuple[np.ndarray, int]] = {}  # the (at most 3) videos being filmed
  for i in range(n):
    if i % (3 * frames_per_video) == 0:
      scenes.clear()
    if video[i] not in scenes:  # a new video: its content and attack instance, drawn once
      if rng.random() < photo_fraction:
        region = int(regions[rng.integers(len(regions))])
        scene, who = _photo_crop(rng, photos, region, render), NUM_FACES + region
      else:
        face = int(face_ids[rng.integers(len(face_ids))])
        scene, who = _face(rng, faces[face], render), face
      if attack[i]:
        scene = (print_attack if attack[i] == 1 else replay_attack)(rng, scene, domain, shift)
      scenes[video[i]] = scene, who
    scene, subject[i] = scenes[video[i]]
    images[i] = camera(rng, _motion(rng, scene), domain, resolution)
  return {
    "image": images,
    "label": (attack == 0).astype(np.int32),
    "attack": attack.astype(np.int32),
    "domain": np.full(n, domain, np.int32),
    "subject": subject,
    "video": video,
  }


def _motion(rng, scene: np.ndarray) -> np.ndarray:
  """A frame's small head / hand motion: a sub-pixel shift of up to 1 render pixel."""
  from scipy.ndimage import shift

  return shift(scene, (*rng.uniform(-1.0, 1.0, 2), 0), order=1, mode="nearest")


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


def attack_params(rng, kind: str, domain: int, shift: str = SHIFTS[0]) -> dict[str, float]:
  """One attack instance's artefact parameters ("print" or "replay"), each from its band."""
  names = PRINT_PARAMS if kind == "print" else REPLAY_PARAMS
  return {name: float(rng.uniform(*artefact_band(name, domain, shift))) for name in names}


def _grid(size: int):
  coords = (np.arange(size) + 0.5) / size  # in image sides
  return np.meshgrid(coords, coords, indexing="ij")


def print_attack(rng, image: np.ndarray, domain: int, shift: str = SHIFTS[0]) -> np.ndarray:
  """A photo print: gamut compression, CMY halftone screen, paper texture."""
  from scipy.ndimage import gaussian_filter

  p = attack_params(rng, "print", domain, shift)
  size = image.shape[0]
  grey = image.mean(axis=-1, keepdims=True)
  out = grey + p["print_saturation"] * (image - grey)
  black, white = p["print_black"], p["print_white"]
  out = black + (white - black) * out
  freq, angle = p["halftone_freq"], p["halftone_angle"]
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
  mix = p["halftone_mix"]
  out = (1 - mix) * out + mix * screened
  fibres = gaussian_filter(rng.normal(size=(size, size)), 1.2)
  fibres /= fibres.std() + 1e-8
  out = out * (1.0 + p["paper_texture"] * fibres[..., None])
  return np.clip(out, 0.0, 1.0)


def replay_attack(rng, image: np.ndarray, domain: int, shift: str = SHIFTS[0]) -> np.ndarray:
  """A screen replay: gamma and colour cast, backlight leak, moire, specular glare."""
  p = attack_params(rng, "replay", domain, shift)
  size = image.shape[0]
  out = image ** p["screen_gamma"]
  out = out * np.array([1.0, 1.0, p["screen_blue"]])
  leak = p["backlight"]
  out = leak + (1 - leak) * out
  yy, xx = _grid(size)
  freq, angle = p["moire_freq"], np.deg2rad(p["moire_angle"])
  phase = rng.uniform(0, 2 * np.pi)
  grating = np.cos(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
  out = out * (1.0 + p["moire_amplitude"] * grating[..., None])
  cy, cx = rng.uniform(0.1, 0.9, 2)
  radius = rng.uniform(0.12, 0.3)
  glare = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
  out = out + p["glare"] * glare[..., None]
  return np.clip(out, 0.0, 1.0)


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
