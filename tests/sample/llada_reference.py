"""A plain NumPy transcription of the published LLaDA `generate` (GSAI-ML/LLaDA, generate.py):
semi-autoregressive blocks, low_confidence / random remasking, Gumbel temperature, classifier-free
guidance. Written from the paper's algorithm and reference loop, independently of jaxdiff's sampler;
`logits_fn(x [B, L]) -> [B, L, V]` is the model. Returns x and, per position, the step (counted
over the whole call) at which it was committed (-1: prompt)."""
import numpy as np


def num_transfer_tokens(mask_index: np.ndarray, steps: int) -> np.ndarray:
    mask_num = mask_index.sum(axis=1, keepdims=True)
    base = mask_num // steps
    remainder = mask_num % steps
    out = np.zeros((mask_index.shape[0], steps), np.int64) + base
    for i in range(mask_index.shape[0]):
        out[i, :remainder[i, 0]] += 1
    return out


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def llada_generate(logits_fn, prompt, *, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                   remasking="low_confidence", mask_id, random_scores=None, gumbel_uniforms=None):
    """random_scores(block, step) -> [B, block_length] uniforms for remasking='random';
    gumbel_uniforms(block, step) -> [B, block_length, V] uniforms for temperature > 0 (pinned draws)."""
    b, p = prompt.shape
    x = np.full((b, p + gen_length), mask_id, np.int64)
    x[:, :p] = prompt
    committed_at = np.full(x.shape, -1, np.int64)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    t = 0
    for nb in range(num_blocks):
        lo, hi = p + nb * block_length, p + (nb + 1) * block_length
        block_mask_index = x[:, lo:hi] == mask_id
        ntt = num_transfer_tokens(block_mask_index, steps_per_block)
        for i in range(steps_per_block):
            if not (x[:, lo:hi] == mask_id).any():
                break   # the block is full (jaxdiff skips the empty steps; LLaDA would commit nothing)
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.copy()
                un_x[prompt_index] = mask_id
                both = logits_fn(np.concatenate([x, un_x], axis=0))
                logits, un_logits = both[:b], both[b:]
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = logits_fn(x)
            logits = logits.astype(np.float64)
            if temperature > 0:   # LLaDA's add_gumbel_noise: exp(logits) / (-log u) ** temperature, float64
                noisy = np.exp(logits)
                u = np.asarray(gumbel_uniforms(nb, i), np.float64)
                noisy[:, lo:hi] = np.exp(logits[:, lo:hi]) / (-np.log(u)) ** temperature
                x0 = noisy.argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                pr = softmax(logits)
                x0_p = np.take_along_axis(pr, x0[..., None], -1)[..., 0]
            elif remasking == "random":
                x0_p = np.full(x.shape, -np.inf)
                x0_p[:, lo:hi] = random_scores(nb, i)
            else:
                raise ValueError(f"remasking={remasking!r}: the published loop has 'low_confidence' and 'random'")
            x0_p[:, hi:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            confidence = np.where(mask_index, x0_p, -np.inf)
            transfer = np.zeros(x0.shape, bool)
            for j in range(b):
                select = np.argsort(-confidence[j], kind="stable")[:ntt[j, i]]
                transfer[j, select] = True
            x[transfer] = x0[transfer]
            committed_at[transfer] = t
            t += 1
    return x, committed_at
