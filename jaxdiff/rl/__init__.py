"""On-policy learning from verifier rewards: rollouts, rewards, advantages, the policy loss and the
loop (docs/rl.md)."""
