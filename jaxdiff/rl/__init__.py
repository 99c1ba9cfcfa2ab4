"""On-policy learning from verifier rewards: rollouts, rewards, advantages, the policy loss (docs/rl.md).

Traced rollouts (`rollout`) and the likelihood estimators of a masked-diffusion policy
(`token_log_probs`: trace replay, coupled complementary masks, mean-field) are re-exported here."""
from jaxdiff.rl.estimators import (ESTIMATOR_FNS, EstimatorSettings, coupled, estimate, mean_field, token_log_probs,
                                   trace_replay)
from jaxdiff.rl.rollout import Rollout, rollout, rollout_settings, trace_rollout

__all__ = ["ESTIMATOR_FNS", "EstimatorSettings", "Rollout", "coupled", "estimate", "mean_field", "rollout",
           "rollout_settings", "token_log_probs", "trace_replay", "trace_rollout"]
