"""Cross-domain protocols: train on source domains, test on target domains.

  "d0"            leave-one-domain-out (O&C&I->M style): every other domain is a source
  "d1&d2->d0"     explicit sources -> targets (e.g. limited-source: two sources, one target)
  "in_domain"     every domain is a source and a target: the in-domain ceiling

Model selection and the honest HTER threshold use only the sources' val splits; the target
domains contribute their test splits and nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from shared.errors import ConfigError, DataError

IN_DOMAIN = "in_domain"


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Source domain indices -> target domain indices, with a readable name."""

  sources: tuple[int, ...]
  targets: tuple[int, ...]
  name: str

  @property
  def slug(self) -> str:
    """A folder name: 'd1_d2_d3-to-d0'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", self.name.replace("->", "-to-").replace("&", "_"))

  @property
  def in_domain(self) -> bool:
    return set(self.targets) <= set(self.sources)


def _indices(names: Sequence[str], domains: Sequence[str], spec: str) -> tuple[int, ...]:
  for name in names:
    if name not in domains:
      raise ConfigError(
        f"protocol {spec!r} names {name!r}, which is not a domain; domains: {list(domains)}"
      )
  if not names or len(set(names)) != len(names):
    raise ConfigError(f"protocol {spec!r}: each side lists distinct domains, at least one")
  return tuple(list(domains).index(n) for n in names)


def parse_protocols(domains: Sequence[str], specs: Sequence[str]) -> list[Protocol]:
  """The protocols `specs` name (see the module doc); () = leave each domain out in turn."""
  if len(domains) < 2:
    raise ConfigError(f"cross-domain protocols need >= 2 domains, got {list(domains)}")
  out = []
  for spec in specs or domains:
    if spec == IN_DOMAIN:
      every = tuple(range(len(domains)))
      out.append(Protocol(every, every, "in-domain"))
      continue
    if "->" in spec:
      left, _, right = spec.partition("->")
      sources = _indices([s for s in left.split("&") if s], domains, spec)
      targets = _indices([s for s in right.split("&") if s], domains, spec)
      if set(sources) & set(targets):
        raise ConfigError(f"protocol {spec!r}: a domain is both a source and a target")
    else:
      targets = _indices([spec], domains, spec)
      sources = tuple(i for i in range(len(domains)) if i not in targets)
    name = "&".join(domains[i] for i in sources) + "->" + "&".join(domains[i] for i in targets)
    out.append(Protocol(sources, targets, name))
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
