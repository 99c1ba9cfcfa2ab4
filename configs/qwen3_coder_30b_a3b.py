"""Qwen3-Coder-30B-A3B-Instruct (FP8 release) -> a diffusion coder: frozen FP8 base, LoRA r=128 on
the AR and diffusion heads, r=64 on the length head, Seed-Diffusion two-stage schedule, block
attention, SFT data.

    python tools/convert_hf.py --hf_dir /ckpt/Qwen3-Coder-30B-A3B-Instruct-FP8 --out_dir /ckpt/coder30b-jd
    python launch/train.py --config configs/qwen3_coder_30b_a3b.py \\
        --config.model.checkpoint=/ckpt/coder30b-jd --config.data.path=/data/sft.jsonl

Mesh: 8 GPUs of one host as fsdp=1, expert=8 by default; see the README for multi-host layouts.
Memory: on 8 x H100 80GB, batch 64 x 2048 (8 sequences a GPU), remat full, MoE capacity factor 1.25,
the planner's train-step total is 30.5 GB a GPU, sampling 13.2 GB (`python tools/plan_memory.py
--config configs/qwen3_coder_30b_a3b.py --devices 8`; the README's table, 2026-12-01). With the
dropless all-to-all (`model.moe_capacity_factor = 0`) its dispatch buffers (8 sources x the GPU's
16,384 tokens x min(k, E/8) rows x D) take 26.3 GB and the step 52.7 GB a GPU.
"""
from jaxdiff.config import defaults as base

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def reference_hf_config() -> dict:
    """The FP8 release's config.json (the architecture, for shape checks without weights): the
    Instruct release's published file plus the FP8 quantization_config, as `jaxdiff.config.published`
    records it."""
    from jaxdiff.config.published import published_config
    return published_config("Qwen3-Coder-30B-A3B-Instruct-FP8")


def get_config(arg=None):
    c = base.get_config()
    c.workdir = "runs/qwen3_coder_30b_a3b"
    c.model.checkpoint = ""          # required: a converted checkpoint (FP8 kept)
    c.model.dtype = ""               # keep the checkpoint's dtypes: FP8 weights, bf16 activations
    c.model.remat = True
    c.model.moe_capacity_factor = 1.25   # E x ceil(1.25 T k / E) x D dispatch buffers, not E x T x D
    c.lora.full_training = False
    c.lora.ar = base.lora_head(rank=128, alpha=256.0, targets=TARGETS)
    c.lora.diffusion = base.lora_head(rank=128, alpha=256.0, targets=TARGETS)
    c.lora.length = base.lora_head(rank=64, alpha=128.0, targets=TARGETS)
    c.length_head.edges = "64,128,256,512,1024,2048"
    c.objective.attention = "block"
    c.objective.block_size = 32
    c.objective.sft = True
    c.objective.ar_weight = 0.5
    c.objective.diffusion_weight = 1.0
    c.objective.length_weight = 0.1
    c.objective.stage2_step = 2000   # Seed-Diffusion: edit-based corruption from here on
    c.objective.edit_fraction = 0.1
    c.data.kind = "sft"
    c.data.seq_len = 2048
    c.data.batch_size = 64
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 200
    c.optimizer.total_steps = 10000
    c.train.steps = 10000
    c.train.peak_tflops = 989.0       # H100 SXM dense bf16
    c.mesh.data, c.mesh.fsdp, c.mesh.expert = -1, 1, 8   # data = world size / 8: 1 node of 8 GPUs, or N
    return c
