"""On-policy learning from verifier rewards: rollouts, rewards, advantages, the policy loss (docs/rl.md)."""
