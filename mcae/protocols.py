"""Leave-one-domain-out protocols (O&C&I->M style): train on three domains, test on the fourth.

Model selection and the honest HTER threshold use only the sources' val splits; the held-out
domain contributes its test split and nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from shared.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Source domain indices -> one target domain index, with a readable name."""

  sources: tuple[int, ...]
  target: int
  name: str

  @property
  def slug(self) -> str:
    """A folder name: 'd1_d2_d3-to-d0'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", self.name.replace("->", "-to-").replace("&", "_"))


def leave_one_out(domains: Sequence[str], targets: Sequence[str]) -> list[Protocol]:
  """One protocol per target name: the other domains are the sources."""
  if len(domains) < 2:
    raise ConfigError(f"leave-one-domain-out needs >= 2 domains, got {list(domains)}")
  out = []
  for target in targets:
    if target not in domains:
      raise ConfigError(f"protocol target {target!r} is not a domain; domains: {list(domains)}")
    t = list(domains).index(target)
    sources = tuple(i for i in range(len(domains)) if i != t)
    name = "&".join(domains[i] for i in sources) + "->" + target
    out.append(Protocol(sources, t, name))
  return out


def select(arrays: Mapping[str, np.ndarray], domains: Sequence[int], what: str) -> dict:
  """The rows of `arrays` whose 'domain' is in `domains` (a DataError when there are none)."""
  rows = np.isin(arrays["domain"], np.asarray(domains))
  if not rows.any():
    raise DataError(f"{what}: no examples of domains {list(domains)}")
  out = {k: v[rows] for k, v in arrays.items()}
  labels = out["label"]
  if labels.min() == labels.max():
    raise DataError(f"{what}: needs both live and spoof examples, got only label {labels[0]}")
  return out
