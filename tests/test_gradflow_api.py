"""gradflow_prune's Python API: prune a tiny U-Net, save -> load -> sample, bad input."""

import jax
import numpy as np
import pytest

import gradflow_prune
from configs import gradflow_prune as config_file
from gradflow_prune import export, procedures
from shared.errors import ConfigError, DataError, UserError
from shared.models import unet
from tests import background

fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)


@pytest.fixture(scope="module")
def bed():
  """The tiny variant's settings, a dense tiny8 U-Net (perturbed init) and 32 uint8 8x8 images."""
  config = config_file.get_config("tiny")
  config.prune.iterations, config.prune.n_flow, config.prune.n_train = 1, 1, 2
  cfg = unet.preset("tiny8")
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
    jax.device_get(unet.init_params(unet.from_config_dict(cfg), 0)),
  )
  images = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
  return dict(config=config, cfg=cfg, params=params, images=images)


def _prune(bed, **kw):
  kw = {"keep": 0.5, "procedure": "oneshot", "criterion": "magnitude", "finetune_steps": 2, **kw}
  return gradflow_prune.prune(bed["params"], bed["cfg"], bed["images"], config=bed["config"], **kw)


def test_prune_shrinks_the_unet_and_save_load_sample_is_identical(bed, tmp_path):
  pruned = _prune(bed)
  dense = unet.num_params(bed["params"])
  assert isinstance(pruned, gradflow_prune.PrunedUNet)
  assert pruned.num_params < 0.5 * dense and pruned.macs < 0.5 * export.evaluate.unet_macs(
    bed["cfg"]
  )
  assert pruned.config["widths"]["conv_in.out"] == 4  # 8 channels, keep 0.5
  assert pruned.meta["provenance"]["procedure"] == "oneshot"
  images = gradflow_prune.sample(pruned, 4, jax.random.PRNGKey(1), steps=2)
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.float32
  assert np.all((images >= 0) & (images <= 1))
  gradflow_prune.save(str(tmp_path / "m"), pruned)
  again = gradflow_prune.load(str(tmp_path / "m"))
  assert again.config == pruned.config and again.meta == pruned.meta
  np.testing.assert_array_equal(gradflow_prune.sample(again, 4, jax.random.PRNGKey(1), steps=2),
                                images)  # fmt: skip
  assert not np.array_equal(gradflow_prune.sample(again, 4, jax.random.PRNGKey(2), steps=2), images)


def test_gradflow_procedure_gives_the_same_widths_and_other_weights(bed):
  oneshot = _prune(bed, finetune_steps=0)
  flow = _prune(bed, procedure="gradflow", finetune_steps=0)
  assert flow.meta["provenance"]["procedure"] == "iterative"
  assert flow.meta["provenance"]["interleaved_steps"] == 2
  assert flow.config == oneshot.config  # the same channel counts per unit...
  a, b = jax.tree.leaves(flow.params), jax.tree.leaves(oneshot.params)
  assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # ...trained between


def test_the_api_call_and_the_procedures_module_are_apart():
  from gradflow_prune import api

  assert gradflow_prune.prune is api.prune and procedures.FlowConfig().iterations == 4


def test_bad_input_is_a_one_line_user_error(bed, tmp_path):
  p, cfg, x, config = bed["params"], bed["cfg"], bed["images"], bed["config"]
  other = unet.preset("tiny8", ch=16)
  call = lambda **kw: gradflow_prune.prune(
    kw.pop("params", p), kw.pop("cfg", cfg), kw.pop("data", x), config=config, **kw
  )
  cases = [
    (DataError, r"\[N, 8, 8, 1\]", lambda: call(data=x[..., 0])),
    (DataError, "uint8 or float", lambda: call(data=x * 2.0)),
    (DataError, "at least 16", lambda: call(data=x[:4])),
    (ConfigError, r"keep must be in \(0, 1\]", lambda: call(keep=1.5)),
    (ConfigError, "unknown procedure 'magic'", lambda: call(procedure="magic")),
    (ConfigError, "unknown criterion 'l1'", lambda: call(criterion="l1")),
    (ConfigError, "finetune_steps", lambda: call(finetune_steps=-1)),
    (ConfigError, "do not match unet_config", lambda: call(cfg=other)),
    (ConfigError, "unknown U-Net config fields", lambda: call(cfg={"ch": 8, "bogus": 1})),
    (ConfigError, "num must be >= 1",
     lambda: gradflow_prune.sample(_prune(bed, finetune_steps=0), 0, jax.random.PRNGKey(0))),
    (ConfigError, "takes a PrunedUNet", lambda: gradflow_prune.save(str(tmp_path), {"a": 1})),
    (export.ExportError, "holds no exported U-Net",
     lambda: gradflow_prune.load(str(tmp_path / "none"))),
  ]  # fmt: skip
  for error, match, fn in cases:
    with pytest.raises(error, match=match) as info:
      fn()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value), match
