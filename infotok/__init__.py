"""InfoTok: an information-bottleneck-regularised shared visual tokenizer for unified models.

The Python API (`infotok.api`), on arrays, without the command line or a workdir:

    import infotok
    cfg = infotok.default_config()          # configs/infotok.py's tokenizer section; edit freely
    cfg.num_steps = 300
    base = infotok.train_tokenizer(images, config=cfg)                  # reconstruction only
    vib = infotok.train_tokenizer(
      images, config=cfg, weights=infotok.variant_weights("vib_kl", 1e-3)  # + noise and KL
    )
    ids_BxN = vib.encode(images)            # int32 code ids, N = vib.num_tokens
    recon_BxHxWx3 = vib.decode(ids_BxN)     # float32 in [0, 1]
    infotok.save_tokenizer("runs/tok", vib)  # params.safetensors + tokenizer.json
    vib = infotok.load_tokenizer("runs/tok")

images: uint8 or [0, 1] float [N, H, W, 3]; the text terms (consistency, align, HSIC's lambda_y)
also need `captions`, int token ids [N, L]. The whole study (judge, sweeps, unified models):
`python -m infotok --config configs/infotok.py --workdir runs/infotok` (`infotok.train`).
"""

_API = (
  "Tokenizer",
  "default_config",
  "load_tokenizer",
  "save_tokenizer",
  "train_tokenizer",
  "variant_weights",
)
__all__ = ["WEIGHT_NAMES", *_API]


def __getattr__(name):
  """The API on first use (PEP 562): importing a light submodule such as `infotok.beds` (the bed
  names configs/infotok.py reads) does not import JAX and the models."""
  if name in _API:
    from infotok import api  # noqa: PLC0415

    return getattr(api, name)
  if name == "WEIGHT_NAMES":
    from infotok.tokenizer import WEIGHT_NAMES  # noqa: PLC0415

    return WEIGHT_NAMES
  raise AttributeError(f"module 'infotok' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *__all__})
