"""Three LoRA heads on one frozen base: `ar` (causal scaffold), `diffusion` (masked infill) and
`length` (answer-length classifier), each its own NNX variable type and so its own subtree.

The types subclass `nnx.Variable`, not `nnx.Param`: `FROZEN = nnx.Param` selects the base and
nothing else, `TRAINABLE` every adapter. B starts at zero, so an untrained adapter changes nothing.

Which head is active is an argument of the forward pass: `Qwen3.forward(lora=...)` builds an
`ActiveHead` and hands it down to every projection. Every adapted projection computes the same
unmerged form, `project`: x W^T + scale (drop(x) A^T) B^T, with one matmul function for both
parts (a plain matmul, or the grouped expert matmuls of moe.py / expert_parallel.py). W + BA is
formed only when an adapter is exported merged.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxdiff.parallel import axes as ax


class LoRAAr(nnx.Variable):
    """Adapters of the autoregressive scaffold head."""


class LoRADiffusion(nnx.Variable):
    """Adapters of the diffusion infill head."""


class LoRALength(nnx.Variable):
    """Adapters and classifier of the length-prediction head."""


class MaskEmbedding(nnx.Variable):
    """The `<|mask|>` embedding row when it is trained (otherwise it lives in the frozen table)."""


HEAD_TYPES: dict[str, type[nnx.Variable]] = {"ar": LoRAAr, "diffusion": LoRADiffusion, "length": LoRALength}
HEADS = tuple(HEAD_TYPES)
FROZEN = nnx.Param
TRAINABLE = nnx.Any(LoRAAr, LoRADiffusion, LoRALength, MaskEmbedding)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """rank r, alpha (scale = alpha / r), dropout on the adapter input, and target module names
    (regular expressions matched against the module path, e.g. "q_proj" or r"experts\\.(gate|up)_proj")."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@struct.dataclass
class ActiveHead:
    """The adapter head a forward pass runs with (None: the base alone) and, in training, the key
    of its adapter dropout."""

    name: str | None = struct.field(pytree_node=False, default=None)
    dropout_key: jax.Array | None = None

    def __post_init__(self):
        if self.name is not None and self.name not in HEAD_TYPES:
            raise ValueError(f"lora head {self.name!r}; choose from {HEADS}")


BASE = ActiveHead()


@struct.dataclass
class LoRAWeights:
    """One projection's adapter as the forward pass uses it: A [..., r, in], B [..., out, r]."""

    a: jax.Array
    b: jax.Array
    scale: float = struct.field(pytree_node=False)
    rate: float = struct.field(pytree_node=False, default=0.0)
    uid: int = struct.field(pytree_node=False, default=0)
    dropout_key: jax.Array | None = None

    def drop(self, x: jax.Array) -> jax.Array:
        if self.rate <= 0 or self.dropout_key is None:
            return x
        keep = jax.random.bernoulli(jax.random.fold_in(self.dropout_key, self.uid), 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


def dense_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] W [out, in]^T -> [..., out]."""
    return jnp.einsum("...D,FD->...F", x, w.astype(x.dtype))


@jax.custom_vjp
def _dense_up(low: jax.Array, b: jax.Array) -> jax.Array:
    """low [..., r] B [out, r]^T: `dense_matmul`, with a backward that forms B's gradient as
    (low^T dy)^T, so the rank-r side is transposed, not dy [..., out] (XLA:CPU otherwise copies dy
    transposed for every adapted projection)."""
    return dense_matmul(low, b)


def _dense_up_fwd(low, b):
    return dense_matmul(low, b), (low, b)


def _dense_up_bwd(res, dy):
    low, b = res
    d_low = jnp.einsum("...F,FD->...D", dy, b.astype(dy.dtype))
    d_bt = jnp.einsum("...D,...F->DF", low, dy)
    return d_low, jnp.swapaxes(d_bt, 0, 1).astype(b.dtype)


_dense_up.defvjp(_dense_up_fwd, _dense_up_bwd)


def project(x: jax.Array, w: jax.Array, lora: LoRAWeights | None,
            matmul: Callable[[jax.Array, jax.Array], jax.Array] = dense_matmul) -> jax.Array:
    """x W^T + scale (drop(x) A^T) B^T, every product through `matmul` (weights [..., out, in])."""
    y = matmul(x, w)
    if lora is not None:
        low = matmul(lora.drop(x), lora.a.astype(x.dtype))
        up = _dense_up if matmul is dense_matmul and lora.b.ndim == 2 else matmul
        y = y + lora.scale * up(low, lora.b.astype(x.dtype))
    return y


class Adapted:
    """Mixin of the projections that can carry adapters (Linear, ExpertLinear): the per-head
    settings are a tuple of (head, scale, dropout, uid), static and hashable."""

    lora_settings: tuple[tuple[str, float, float, int], ...] = ()

    def adapter(self, active: ActiveHead | None) -> LoRAWeights | None:
        if active is None or active.name is None:
            return None
        for head, scale, rate, uid in self.lora_settings:
            if head == active.name:
                return LoRAWeights(getattr(self, f"lora_{head}_a")[...], getattr(self, f"lora_{head}_b")[...],
                                   scale, rate, uid, active.dropout_key)
        return None


def add_lora(model: nnx.Module, head: str, spec: LoRASpec, *, seed: int = 0) -> list[str]:
    """Attaches `head` adapters to every Linear / ExpertLinear whose path matches a target (the
    builder does this once, before the model is used). Returns the adapted module paths; raises
    if no module matched (a typo in targets)."""
    if head not in HEAD_TYPES:
        raise ValueError(f"lora head {head!r}; choose from {HEADS}")
    var_type = HEAD_TYPES[head]
    patterns = [re.compile(t) for t in spec.targets]
    key = jax.random.key(seed)
    adapted = []
    for uid, (path, module) in enumerate(nnx.iter_graph(model)):
        if not isinstance(module, Adapted):
            continue
        name = ".".join(str(p) for p in path)
        if not any(p.search(name) for p in patterns):
            continue
        out_f, in_f = module.weight.shape[-2:]
        out_axis, in_axis = module.weight.get_metadata()["axes"][-2:]
        lead = module.weight.shape[:-2]          # (E,) for experts
        lead_axes = module.weight.get_metadata()["axes"][:-2]
        k = jax.random.fold_in(key, uid)
        # A ~ Kaiming-uniform-like (as PEFT), B = 0.
        bound = 1.0 / (in_f ** 0.5)
        a = jax.random.uniform(k, (*lead, spec.rank, in_f), jnp.float32, -bound, bound)
        setattr(module, f"lora_{head}_a", var_type(a, axes=(*lead_axes, ax.LORA_RANK, in_axis)))
        setattr(module, f"lora_{head}_b", var_type(jnp.zeros((*lead, out_f, spec.rank), jnp.float32),
                                                   axes=(*lead_axes, out_axis, ax.LORA_RANK)))
        others = tuple(h for h in module.lora_settings if h[0] != head)
        module.lora_settings = tuple(sorted(others + ((head, float(spec.scale), float(spec.dropout), uid),)))
        adapted.append(name)
    if not adapted:
        raise ValueError(f"lora head {head!r}: no module matched targets {spec.targets}")
    model.lora_heads = tuple(sorted(set(getattr(model, "lora_heads", ())) | {head}))
    return adapted


class LengthHead(nnx.Module):
    """Answer-length bucket classifier on the mean-pooled final hidden state of the prompt:
    logits [B, n_buckets] = W2 silu(W1 pooled). Bucket i covers lengths up to edges[i]."""

    def __init__(self, dim: int, edges: tuple[int, ...], *, hidden: int = 256, seed: int = 0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.edges = tuple(int(e) for e in edges)
        self.w1 = LoRALength(jax.random.normal(k1, (hidden, dim), jnp.float32) * dim ** -0.5,
                             axes=(None, ax.EMBED))
        self.w2 = LoRALength(jnp.zeros((len(self.edges), hidden), jnp.float32), axes=(None, None))

    def __call__(self, hidden: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        m = prompt_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return jax.nn.silu(pooled @ self.w1[...].T) @ self.w2[...].T

    def bucket(self, lengths: jax.Array) -> jax.Array:
        """Bucket index of each length (lengths above the last edge fall in the last bucket)."""
        idx = jnp.searchsorted(jnp.asarray(self.edges), lengths, side="left")
        return jnp.minimum(idx, len(self.edges) - 1)

    def length_of(self, bucket: jax.Array) -> jax.Array:
        return jnp.asarray(self.edges)[bucket]


def add_length_head(model: nnx.Module, edges: tuple[int, ...], *, hidden: int = 256, seed: int = 0) -> None:
    model.length_head = LengthHead(model.config.hidden_size, edges, hidden=hidden, seed=seed)
