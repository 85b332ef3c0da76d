"""InfoTok's paired verdicts: a variant minus the baseline of the same style and seed.

A variant and the baseline are scored on the same test items (the first `eval.num_examples` of
each split, the same prompts, the same sampling keys), so the per-item difference
d[s, i] = score_variant[s, i] - score_baseline[s, i] removes what the item and the seed do to
both; its interval is `shared.stats.bootstrap_two_stage` (seeds, then items within each seed).
"improves" is 'yes' only when the interval lies above 0.
"""

from __future__ import annotations

from shared.stats import bootstrap_two_stage as paired_bootstrap
from shared.stats import format_interval
from shared.stats import verdict as _verdict

__all__ = ["format_interval", "paired_bootstrap", "verdict"]


def verdict(ci: dict) -> str:
  """'yes' when the interval lies above 0, 'worse' when below, else 'no difference shown'."""
  return _verdict(ci, better="higher", yes="yes")
