"""FAS data: the `fas_proxy` built-in and the SSDG-style JSON-list loader `fas_json`."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.stats import ks_2samp

from shared import data
from shared.data import fas_proxy
from shared.errors import DataError

SMALL = {"resolution": 16, "num_train": 30, "num_val": 6, "num_test": 12}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fas_data"))


@pytest.fixture(scope="module")
def proxy(data_dir):
  return {s: data.load("fas_proxy", s, data_dir=data_dir, **SMALL) for s in fas_proxy.SPLITS}


# ----------------------------------------------------------------------------------------------
# fas_proxy


def test_proxy_fields_shapes_and_balance(proxy):
  info = data.info("fas_proxy", **SMALL)
  assert info["num_classes"] == 2 and info["domains"] == ["d0", "d1", "d2", "d3"]
  for split, n in (("train", 30), ("val", 6), ("test", 12)):
    a = proxy[split]
    assert a["image"].shape == (4 * n, 16, 16, 3) and a["image"].dtype == np.uint8
    for d in range(4):
      rows = a["domain"] == d
      assert rows.sum() == n
      # A third live, a third print, a third replay; label 1 = live exactly when attack 0.
      assert np.bincount(a["attack"][rows], minlength=3).tolist() == [n // 3] * 3
    np.testing.assert_array_equal(a["label"], (a["attack"] == 0).astype(np.int32))


def test_proxy_frames_come_in_videos(proxy):
  """Several frames per video (4 by default): one domain, content and attack type per video,
  frames that differ (motion, sensor noise), and the thirds balanced as before."""
  a = proxy["train"]
  for d in range(4):
    rows = np.flatnonzero(a["domain"] == d)
    videos = a["video"][rows]
    sizes = np.bincount(videos)
    assert sizes.max() == 4 and (sizes > 0).sum() >= 30 // 4
    for v in np.unique(videos):
      frames = rows[videos == v]
      assert len(set(a["attack"][frames])) == 1 and len(set(a["subject"][frames])) == 1
      if len(frames) > 1:
        assert not np.array_equal(a["image"][frames[0]], a["image"][frames[1]])
  np.testing.assert_array_equal(fas_proxy.video_ids(7, 2), [0, 1, 2, 0, 1, 2, 3])


def test_proxy_is_deterministic_and_cached(data_dir, proxy):
  again = data.load("fas_proxy", "val", data_dir=data_dir, **SMALL)  # from the .npz cache
  rebuilt = fas_proxy.build("val", data_dir, **SMALL)  # from scratch
  np.testing.assert_array_equal(again["image"], proxy["val"]["image"])
  np.testing.assert_array_equal(rebuilt["image"], proxy["val"]["image"])  # uint8 as built
  other = fas_proxy.build("val", data_dir, **{**SMALL, "seed": 1})
  assert not np.array_equal(other["image"], rebuilt["image"])


def test_proxy_contents_are_disjoint_across_domains_and_splits(proxy):
  owners = {}
  for split, a in proxy.items():
    for subject, domain in zip(a["subject"], a["domain"], strict=True):
      owners.setdefault(int(subject), set()).add((split, int(domain)))
  assert all(len(o) == 1 for o in owners.values()), "a face or photo region is shared"


def test_artefact_bands_are_disjoint_between_domains():
  for name in fas_proxy.ARTEFACTS:
    bands = sorted(fas_proxy.artefact_band(name, d) for d in range(4))
    assert all(lo < hi for lo, hi in bands)
    assert all(bands[i][1] < bands[i + 1][0] for i in range(3)), name
  # No domain holds the extreme band of every parameter.
  extremes = {
    d: sum(order[d] in (0, 3) for _, order in fas_proxy.ARTEFACTS.values()) for d in range(4)
  }
  assert max(extremes.values()) < len(fas_proxy.ARTEFACTS)


@pytest.mark.parametrize("kind", ["print", "replay"])
def test_camera_only_shift_shares_the_attack_parameters(data_dir, kind):
  """shift="camera": every domain draws the attack parameters from one distribution (the same
  range; samples pass a two-sample KS test), while its images still differ (its camera); the
  default shift keeps them apart (disjoint bands)."""
  draws = {}
  for shift in fas_proxy.SHIFTS:
    for d in (0, 1):
      rng = np.random.default_rng([7, d])
      draws[shift, d] = [fas_proxy.attack_params(rng, kind, d, shift) for _ in range(300)]
  for name in draws["camera", 0][0]:
    assert len({fas_proxy.artefact_band(name, d, "camera") for d in range(4)}) == 1
    samples = {k: np.array([p[name] for p in v]) for k, v in draws.items()}
    assert ks_2samp(samples["camera", 0], samples["camera", 1]).pvalue > 1e-3, name
    lo0, hi0 = samples["attack_and_camera", 0].min(), samples["attack_and_camera", 0].max()
    lo1, hi1 = samples["attack_and_camera", 1].min(), samples["attack_and_camera", 1].max()
    assert hi0 < lo1 or hi1 < lo0, name  # the default: disjoint bands
  a = fas_proxy.build("val", data_dir, **{**SMALL, "shift": "camera"})
  red_over_blue = [
    (lambda x: x[..., 0].mean() / x[..., 2].mean())(a["image"][a["domain"] == d].astype(float))
    for d in (0, 1)
  ]
  # Camera 0 is warm (white balance 1.08 / 0.86), camera 1 cool (0.88 / 1.12).
  assert red_over_blue[0] > 1.15 * red_over_blue[1]
  with pytest.raises(DataError, match="shift"):
    fas_proxy.build("val", data_dir, **{**SMALL, "shift": "attack"})


def test_attacks_leave_their_traces():
  """Print lowers saturation and contrast; replay adds a grating (energy at its frequency)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:64, 0:64] / 64.0
  scene = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.3 + 0.2 * yy, 0.6 - 0.3 * xx], -1)
  printed = fas_proxy.print_attack(rng, scene, 0)
  # Seen from afar (the screen blurred away), a print is less saturated than the scene...
  smooth = lambda im: gaussian_filter(im, (4, 4, 0))
  saturation = lambda im: (im.max(-1) - im.min(-1)).mean()
  assert saturation(smooth(printed)) < 0.9 * saturation(smooth(scene))
  # ... and close up it holds the halftone screen: far more fine-scale energy than the scene.
  fine = lambda im: np.abs(im - smooth(im)).mean()
  assert fine(printed) > 5 * fine(scene)
  flat = np.full((64, 64, 3), 0.5)
  replayed = fas_proxy.replay_attack(np.random.default_rng(1), flat, 2)
  spectrum = np.abs(np.fft.fft2(replayed.mean(-1) - replayed.mean()))
  yy, xx = np.mgrid[0:64, 0:64]
  spectrum[np.hypot(np.minimum(yy, 64 - yy), np.minimum(xx, 64 - xx)) < 3] = 0  # glare's blob
  lo, hi = fas_proxy.artefact_band("moire_freq", 2)
  peak = np.unravel_index(np.argmax(spectrum[:32, :32]), (32, 32))
  assert lo - 1.5 <= np.hypot(*peak) <= hi + 1.5


def test_proxy_bad_options(data_dir):
  with pytest.raises(DataError, match="resolution"):
    data.load("fas_proxy", "train", data_dir=data_dir, resolution=18)
  with pytest.raises(DataError, match="num_val"):
    data.load("fas_proxy", "val", data_dir=data_dir, num_val=1)


# ----------------------------------------------------------------------------------------------
# fas_json


def write_domain(root, domain, splits, size=20, seed=0):
  """PNG frames and SSDG-style lists <root>/<domain>/<split>_label.json (relative paths)."""
  rng = np.random.default_rng(seed)
  folder = root / domain
  (folder / "frames").mkdir(parents=True, exist_ok=True)
  for split, n in splits.items():
    entries = []
    for i in range(n):
      path = f"frames/{split}_{i}.png"
      Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(folder / path)
      entries.append(
        # Two frames per video (i and i + 2), one label per video.
        {
          "photo_path": path,
          "photo_label": int(i % 2),
          "photo_belong_to_video_ID": f"v{i % 2}_{i // 4}",
        }
      )
    (folder / f"{split}_label.json").write_text(json.dumps(entries))


def test_json_lists_load_all_domains(tmp_path):
  write_domain(tmp_path, "msu", {"train": 6, "val": 2, "test": 4})
  write_domain(tmp_path, "casia", {"train": 4, "val": 2, "test": 2}, seed=1)
  options = dict(root=str(tmp_path), domains=("msu", "casia"), image_size=8)
  test = data.load("fas_json", "test", **options)
  assert test["image"].shape == (6, 8, 8, 3) and test["image"].dtype == np.uint8
  np.testing.assert_array_equal(test["domain"], [0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(test["label"], [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(test["attack"], 1 - test["label"])
  # Pixels are the PNG's, resized.
  png = Image.open(tmp_path / "msu" / "frames" / "test_1.png").convert("RGB")
  expected = np.asarray(png.resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(data.to_float(test["image"][1]), expected, atol=1e-6)
  assert data.info("fas_json", **options)["domains"] == ["msu", "casia"]


def test_json_val_carved_from_train_by_video(tmp_path):
  write_domain(tmp_path, "oulu", {"train": 20, "test": 2})
  options = dict(root=str(tmp_path), domains=("oulu",), image_size=8, val_fraction=0.3)
  train, val = (data.load("fas_json", s, **options) for s in ("train", "val"))
  # 10 videos of 2 frames: 3 whole videos go to val, 7 stay in train, no frame in both.
  assert len(val["label"]) == 6 and len(train["label"]) == 14
  assert len(set(val["video"].tolist())) == 3 and len(set(train["video"].tolist())) == 7
  pixels = lambda a: {im.tobytes() for im in a["image"]}
  assert not pixels(train) & pixels(val)


@pytest.mark.parametrize(
  "mutate, words",
  [
    (lambda e: e[1].update(photo_label=2), ["entry 1", "photo_label", "got 2"]),
    (
      lambda e: e[2].update(photo_path="frames/missing.png"),
      ["entry 2", "missing.png", "does not exist"],
    ),
    (lambda e: e[0].pop("photo_label"), ["entry 0", "photo_label"]),
    (lambda e: e.clear(), ["no entries", "empty split"]),
  ],
)
def test_json_bad_entries_name_the_entry(tmp_path, mutate, words):
  write_domain(tmp_path, "replay", {"train": 4, "val": 2, "test": 4})
  path = tmp_path / "replay" / "test_label.json"
  entries = json.loads(path.read_text())
  mutate(entries)
  path.write_text(json.dumps(entries))
  with pytest.raises(DataError) as e:
    data.load("fas_json", "test", root=str(tmp_path), domains=("replay",), image_size=8)
  for w in words:
    assert w in str(e.value), str(e.value)
  assert "replay" in str(e.value)


def test_json_video_folders_and_videos_mixing_labels(tmp_path):
  """An entry naming a folder is a video: its frames (evenly spaced `frames_per_video`, 0 = all)
  become rows with its label and video id; an empty folder (a video with no frames) and a video
  with live and spoof frames are DataErrors naming the entry."""
  write_domain(tmp_path, "msu", {"train": 2, "val": 2, "test": 2})
  video = tmp_path / "msu" / "videos" / "client1"
  video.mkdir(parents=True)
  for k in range(5):
    Image.fromarray(np.full((6, 6, 3), 40 * k, np.uint8)).save(video / f"f{k}.png")
  (tmp_path / "msu" / "videos" / "empty").mkdir()
  path = tmp_path / "msu" / "test_label.json"
  entries = [{"photo_path": "videos/client1", "photo_label": 1}, *json.loads(path.read_text())]
  path.write_text(json.dumps(entries))
  options = dict(root=str(tmp_path), domains=("msu",), image_size=4)
  every = data.load("fas_json", "test", **options)
  assert len(every["label"]) == 5 + 2 and (every["video"][:5] == every["video"][0]).all()
  three = data.load("fas_json", "test", frames_per_video=3, **options)
  np.testing.assert_array_equal(three["image"][:3, 0, 0, 0], [0, 80, 160])  # frames 0, 2, 4
  entries[0]["photo_path"] = "videos/empty"
  path.write_text(json.dumps(entries))
  with pytest.raises(DataError, match="entry 0: video folder .*empty has no frames"):
    data.load("fas_json", "test", **options)
  entries[0] = {"photo_path": "frames/test_0.png", "photo_label": 1,
                "photo_belong_to_video_ID": entries[1]["photo_belong_to_video_ID"]}  # fmt: skip
  path.write_text(json.dumps(entries))
  with pytest.raises(DataError, match="entry 1: video .* both live and spoof"):
    data.load("fas_json", "test", **options)


def test_json_missing_list_and_unreadable_image(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load("fas_json", "test", root=str(tmp_path), domains=("msu",), image_size=8)
  write_domain(tmp_path, "msu", {"train": 2, "val": 2, "test": 2})
  (tmp_path / "msu" / "frames" / "test_0.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match="entry 0: cannot read image"):
    data.load("fas_json", "test", root=str(tmp_path), domains=("msu",), image_size=8)
  (tmp_path / "msu" / "test_label.json").write_text('{"photo_path": "x"}')
  with pytest.raises(DataError, match="JSON list"):
    data.load("fas_json", "test", root=str(tmp_path), domains=("msu",), image_size=8)


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_json_paths_outside_the_data_root_are_refused(tmp_path, kind):
  root = tmp_path / "root"
  write_domain(root, "msu", {"train": 2, "val": 2, "test": 2})
  outside = tmp_path / "elsewhere.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
  path = root / "msu" / "test_label.json"
  entries = json.loads(path.read_text())
  entries[1]["photo_path"] = "../../elsewhere.png" if kind == "dotdot" else str(outside)
  path.write_text(json.dumps(entries))
  options = dict(root=str(root), domains=("msu",), image_size=8)
  with pytest.raises(DataError, match="entry 1.*outside the data root.*allow_outside_root"):
    data.load("fas_json", "test", **options)
  # The explicit option reads it; a path inside the root given as absolute is fine either way.
  assert len(data.load("fas_json", "test", allow_outside_root=True, **options)["label"]) == 2
  entries[1]["photo_path"] = str(root / "msu" / "frames" / "test_1.png")
  path.write_text(json.dumps(entries))
  assert len(data.load("fas_json", "test", **options)["label"]) == 2


@pytest.mark.parametrize(
  "photo_path, pattern, words",
  [
    (7, None, ["entry 0", "photo_path must be a non-empty path string", "7"]),
    ("", None, ["entry 0", "photo_path"]),
    (None, "{root}/{domain}/{splt}_label.json", ["pattern", "malformed", "splt"]),
    (None, "{root}/{domain}/{split_label.json", ["pattern", "malformed"]),
    (None, "{root}/{domain}/all_label.json", ["pattern", "no {split}"]),
  ],
)
def test_json_malformed_path_field_or_pattern_is_one_data_error(
  tmp_path, photo_path, pattern, words
):
  write_domain(tmp_path, "msu", {"train": 2, "val": 2, "test": 2})
  path = tmp_path / "msu" / "test_label.json"
  entries = json.loads(path.read_text())
  if photo_path is not None:
    entries[0]["photo_path"] = photo_path
  path.write_text(json.dumps(entries))
  options = dict(root=str(tmp_path), domains=("msu",), image_size=8)
  if pattern is not None:
    options["pattern"] = pattern
  with pytest.raises(DataError) as e:
    data.load("fas_json", "test", **options)
  for w in words:
    assert w in str(e.value), str(e.value)
