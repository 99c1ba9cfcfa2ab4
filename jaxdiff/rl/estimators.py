"""Per-token log-probabilities of sampled answers under a masked-diffusion policy (docs/rl.md).

A masked-diffusion model has no exact log-probability of a sequence; each estimator scores every
answer token once in some partially masked context. Letters: N rows, P prompt width, A answer.

  trace_replay  (TraceRL) the contexts the sampler decoded in: for step group j (`shrink`
                consecutive steps), the prompt, the tokens committed before the group and masks
                elsewhere; the group's tokens are scored. One forward per non-empty group.
  coupled       (DiffuCoder coupled-GRPO) t ~ U(0.2, 0.8), mask M_t = {k: u_k < t} of the answer
                and its complement, the prompt never masked; three forwards (answer fully masked,
                masked by M_t, masked by the complement); log p_k = 1/2 [log p(o_k | fully masked)
                + w_k log p(o_k | the one of the two that masks k)], w_k = 1/t on M_t, 1/(1-t) off it.
  mean_field    (d1 diffu-GRPO) each prompt token masked with probability 0.15, the whole answer
                masked, one forward.

Every estimator is a pure, jittable function (model, batch, key, settings) -> (log-probs [N, A]
float32, token mask [N, A]) over a `Rollout` (its prompt, answer and, for trace replay, its trace).
Log-probabilities are log_softmax(logits / temperature) through the vocabulary-chunked output head
with the settings' LoRA head (`diffusion.losses.token_stats_chunked`), the same float32 apply the
sampler's logits come from. Forwards run the whole sequence without a KV cache. The key draws the
masks: pass the same key for the old, reference and current policy within an inner iteration.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.config.schema import ESTIMATORS
from jaxdiff.diffusion.losses import token_stats_chunked
from jaxdiff.model.lora import ActiveHead
from jaxdiff.rl.rollout import Rollout
from jaxdiff.sample.sampler import SamplerSettings


@dataclasses.dataclass(frozen=True)
class EstimatorSettings:
    """Static settings of an estimator (one compile per value). The forward pass must be the one
    the rollout sampled with: `for_rollout` copies mask token, temperature, attention, block length
    and LoRA head from its sampler settings. For the reference policy, replace lora with None.

    shrink: trace replay's steps per group (1: exact contexts). t_range: coupled's U(t_min, t_max).
    prompt_mask_prob: mean-field's prompt masking. vocab_chunk: output-head rows per chunk."""

    estimator: str
    mask_id: int
    temperature: float = 1.0
    attention: str = "bidirectional"
    block_length: int | None = None
    lora: str | None = "diffusion"
    vocab_chunk: int = 8192
    shrink: int = 1
    t_range: tuple[float, float] = (0.2, 0.8)
    prompt_mask_prob: float = 0.15

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r}; choose from {ESTIMATORS}")
        if not self.temperature > 0:
            raise ValueError(f"estimator temperature={self.temperature}: must be > 0")
        if self.attention == "block" and not self.block_length:
            raise ValueError("estimator attention='block' needs the sampler's block_length")
        if self.shrink < 1:
            raise ValueError(f"estimator shrink={self.shrink}: must be >= 1")
        lo, hi = self.t_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"estimator t_range={self.t_range}: needs 0 < t_min <= t_max < 1")
        if not 0 <= self.prompt_mask_prob < 1:
            raise ValueError(f"estimator prompt_mask_prob={self.prompt_mask_prob}: must be in [0, 1)")

    @classmethod
    def for_rollout(cls, s: SamplerSettings, estimator: str = "trace_replay", **kw) -> "EstimatorSettings":
        return cls(estimator=estimator, mask_id=s.mask_id, temperature=s.temperature, attention=s.attention,
                   block_length=s.block_length, lora=s.lora, **kw)


def answer_log_probs(model, prompt_in, prompt_mask, answer_in, targets, s: EstimatorSettings):
    """One forward of prompt_in [N, P] + answer_in [N, A] (no cache; the sampler's attention) ->
    float32 [N, A]: log_softmax(logits / temperature)[targets] at every answer position."""
    n, p = prompt_in.shape
    a = answer_in.shape[1]
    x = jnp.concatenate([prompt_in, answer_in.astype(prompt_in.dtype)], axis=1)
    valid = jnp.concatenate([prompt_mask, jnp.ones((n, a), bool)], axis=1)
    plen = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    hidden = model.forward(x, lora=s.lora, attention=s.attention, block_size=s.block_length, prompt_lengths=plen,
                           padding_mask=valid, logits=False).hidden[:, p:]
    head = model.output_head(hidden.dtype, ActiveHead(s.lora))
    stats = token_stats_chunked(hidden.reshape(n * a, -1), head.weight, targets.reshape(-1), chunk=s.vocab_chunk,
                                lora=head.lora, temperature=s.temperature)
    return -stats.nll.reshape(n, a)


def trace_replay(model, batch: Rollout, key, s: EstimatorSettings):
    """TraceRL: every valid token scored once, in the context it was decoded in (exactly, with
    shrink 1 and a rollout without an approximate cache). A scan over step groups; a group nobody
    committed in costs nothing (lax.cond), and each group's forward is rematerialised in the
    backward pass, so memory stays that of one forward. key: unused (the replay is deterministic)."""
    del key
    n, a = batch.committed.shape
    step = batch.step_map
    graphdef, state = nnx.split(model)

    @jax.checkpoint
    def group_logp(state, answer_in):
        return answer_log_probs(nnx.merge(graphdef, state), batch.prompt_ids, batch.prompt_mask, answer_in,
                                batch.committed, s)

    def body(out, g):
        lo = g * s.shrink
        seen = (step >= 0) & (step < lo)
        scored = (step >= lo) & (step < lo + s.shrink) & batch.valid
        answer_in = jnp.where(seen, batch.committed, s.mask_id)
        logp = jax.lax.cond(jnp.any(scored), lambda: group_logp(state, answer_in),
                            lambda: jnp.zeros((n, a), jnp.float32))
        return jnp.where(scored, logp, out), None

    # a rollout takes at most one step per answer token (each step commits >= 1 per unfinished row)
    out, _ = jax.lax.scan(body, jnp.zeros((n, a), jnp.float32), jnp.arange(-(-a // s.shrink)))
    return out, batch.valid


def coupled_mask(key, shape, t_range=(0.2, 0.8)):
    """t ~ U(t_range) (one per call, as published) and M_t [shape] = {k: u_k < t}, u ~ U(0, 1)."""
    k_t, k_u = jax.random.split(key)
    t = jax.random.uniform(k_t, (), minval=t_range[0], maxval=t_range[1])
    return t, jax.random.uniform(k_u, shape) < t


def coupled_given(model, batch: Rollout, t, in_mask, s: EstimatorSettings):
    """The coupled estimator for a given t and answer mask M_t [N, A] (`coupled` draws them)."""
    n, a = batch.tokens.shape
    tokens = batch.tokens
    answers = jnp.concatenate([jnp.full((n, a), s.mask_id, tokens.dtype),       # fully masked
                               jnp.where(in_mask, s.mask_id, tokens),            # masked by M_t
                               jnp.where(in_mask, tokens, s.mask_id)], axis=0)   # by its complement
    three = lambda v: jnp.concatenate([v, v, v], axis=0)
    logp = answer_log_probs(model, three(batch.prompt_ids), three(batch.prompt_mask), answers, three(tokens),
                            s).reshape(3, n, a)
    once = jnp.where(in_mask, logp[1] / t, logp[2] / (1.0 - t))   # each token where it is masked
    return 0.5 * (logp[0] + once), batch.valid


def coupled(model, batch: Rollout, key, s: EstimatorSettings):
    """DiffuCoder's coupled complementary masks (three forwards, as one batch of 3N rows)."""
    t, in_mask = coupled_mask(key, batch.tokens.shape, s.t_range)
    return coupled_given(model, batch, t, in_mask, s)


def mean_field(model, batch: Rollout, key, s: EstimatorSettings):
    """d1's one-step mean-field estimate: prompt tokens masked with probability prompt_mask_prob
    (padding stays padding), the whole answer masked, one forward."""
    hide = batch.prompt_mask & (jax.random.uniform(key, batch.prompt_ids.shape) < s.prompt_mask_prob)
    prompt_in = jnp.where(hide, s.mask_id, batch.prompt_ids)
    answer_in = jnp.full(batch.tokens.shape, s.mask_id, batch.tokens.dtype)
    return answer_log_probs(model, prompt_in, batch.prompt_mask, answer_in, batch.tokens, s), batch.valid


ESTIMATOR_FNS = {"trace_replay": trace_replay, "coupled": coupled, "mean_field": mean_field}
assert tuple(ESTIMATOR_FNS) == ESTIMATORS


def token_log_probs(model, batch: Rollout, key, s: EstimatorSettings):
    """The estimator s.estimator names: (log-probs [N, A] float32, token mask [N, A]). Pure and
    jittable (s static); 0 at masked-out positions for trace replay."""
    return ESTIMATOR_FNS[s.estimator](model, batch, key, s)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _estimate_jit(graphdef, state, batch, key, settings):
    return token_log_probs(nnx.merge(graphdef, state), batch, key, settings)


def estimate(model, batch: Rollout, key, settings: EstimatorSettings):
    """`token_log_probs` jitted for a model object (tools and tests; a learner calls
    token_log_probs inside its own jitted step)."""
    graphdef, state = nnx.split(model)
    return _estimate_jit(graphdef, state, batch, key, settings)
