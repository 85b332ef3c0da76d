"""Supervised contrastive loss (Khosla et al. 2020, arXiv 2004.11362) and MCAE's positive sets.

Follows the `L_out^sup` form of the paper's eq. 2, as HobbitLong/SupContrast `losses.py` computes
it: every view is an anchor; its positives are the other views with the same group id; its
denominator runs over every other view.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from shared.errors import ConfigError

LIVE_RULES = ("all_domains", "domain")
SPOOF_RULES = ("class", "attack", "domain", "domain_attack")


def supcon_loss(features_NxD: jax.Array, groups_N: jax.Array, temperature: float) -> jax.Array:
  """SupCon loss, a float32 scalar.

    z_i = f_i / ||f_i||,   A(i) = {a != i},   P(i) = {p in A(i): g_p = g_i},
    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) ),
    L = mean of L_i over the anchors i with |P(i)| > 0.

  Args:
    features_NxD: one row per view (all views of all samples stacked), not yet normalised.
    groups_N: int group ids; rows with equal ids are positives (two views of one sample share
      their sample's id, so they are always positives of each other).
    temperature: t.

  Anchors without any positive are left out of the mean (HobbitLong's later fix; the paper's
  batches always hold two views, so every anchor has one).
  """
  z_NxD = features_NxD.astype(jnp.float32)
  z_NxD = z_NxD / jnp.maximum(jnp.linalg.norm(z_NxD, axis=-1, keepdims=True), 1e-12)
  n = z_NxD.shape[0]
  logits_NxN = (z_NxD @ z_NxD.T) / temperature
  not_self_NxN = ~jnp.eye(n, dtype=bool)
  # log-softmax over A(i): the diagonal is excluded from the denominator.
  logits_NxN = jnp.where(not_self_NxN, logits_NxN, -jnp.inf)
  log_prob_NxN = logits_NxN - jax.nn.logsumexp(logits_NxN, axis=1, keepdims=True)
  positive_NxN = (groups_N[:, None] == groups_N[None, :]) & not_self_NxN
  n_pos_N = positive_NxN.sum(axis=1)
  sum_pos_N = jnp.where(positive_NxN, log_prob_NxN, 0.0).sum(axis=1)
  has_pos_N = n_pos_N > 0
  per_anchor_N = -sum_pos_N / jnp.maximum(n_pos_N, 1)
  return jnp.sum(jnp.where(has_pos_N, per_anchor_N, 0.0)) / jnp.maximum(has_pos_N.sum(), 1)


def positive_groups(
  label_B: jax.Array,
  domain_B: jax.Array,
  attack_B: jax.Array,
  *,
  live: str = "all_domains",
  spoof: str = "domain_attack",
  num_domains: int = 4,
  num_attacks: int = 3,
) -> jax.Array:
  """Group ids for `supcon_loss` from FAS labels (label 1 = live, 0 = spoof).

  Args:
    live: 'all_domains' (MCAE: every live sample is a positive of every other, pulling live
      features of different domains together) or 'domain' (live positives within a domain).
    spoof: 'class' (all spoofs are positives), 'attack' (same attack type), 'domain' (same
      domain), or 'domain_attack' (same domain and attack type: spoofs of different domains or
      media stay apart, as SSDG's asymmetric view of the spoof class suggests).
    num_domains, num_attacks: bounds of the domain and attack ids (attack 0 is live).

  Returns:
    int32 ids: live ids lie in [0, num_domains), spoof ids from num_domains on.
  """
  if live not in LIVE_RULES:
    raise ConfigError(f"supcon live positives {live!r}; known: {', '.join(LIVE_RULES)}")
  if spoof not in SPOOF_RULES:
    raise ConfigError(f"supcon spoof positives {spoof!r}; known: {', '.join(SPOOF_RULES)}")
  label_B, domain_B, attack_B = (jnp.asarray(a, jnp.int32) for a in (label_B, domain_B, attack_B))
  live_id = jnp.zeros_like(domain_B) if live == "all_domains" else domain_B
  spoof_id = {
    "class": jnp.zeros_like(domain_B),
    "attack": attack_B,
    "domain": domain_B,
    "domain_attack": domain_B * num_attacks + attack_B,
  }[spoof]
  return jnp.where(label_B == 1, live_id, num_domains + spoof_id).astype(jnp.int32)
