"""On-policy RL of the Qwen3-Coder-30B-A3B diffusion coder with DiffuCoder's coupled-GRPO settings
(apple/ml-diffucoder, ../shared/rl-anchors.md): a fresh r=128 diffusion adapter over the frozen SFT
model (the base with its SFT diffusion adapter merged in), verifier rewards from the synthetic
Python (and, with `bend` on PATH, Bend) training splits.

    # 1. SFT on a bf16 base (a block-FP8 base cannot take a merged adapter: docs/checkpoints.md)
    python tools/convert_hf.py --hf_dir /ckpt/Qwen3-Coder-30B-A3B-Instruct --out_dir /ckpt/coder30b-bf16 \\
        --dtype bfloat16
    python launch/train.py --config configs/qwen3_coder_30b_a3b.py --config.model.checkpoint=/ckpt/coder30b-bf16 \\
        --config.data.path=/data/sft.jsonl
    # 2. merge its diffusion head into the weights (an HF folder; the mask row was not trained, so the
    #    builder derives the same <|mask|> row again)
    python tools/export_peft.py --workdir runs/qwen3_coder_30b_a3b --head diffusion --out_dir /ckpt/coder30b-sft --merge
    # 3. RL
    python launch/rl.py --config configs/rl_qwen3_coder_30b_a3b.py --config.model.checkpoint=/ckpt/coder30b-sft

Published (DiffuCoder coupled-GRPO): coupled complementary masks with t ~ U(0.2, 0.8), G = 10,
mu = 2, token-level clip eps_low = eps_high = 0.5, k3 KL beta = 0.01 (here to the SFT model, the
adapter off; DiffuCoder re-syncs its reference every 64 steps), lr 1e-6, 256 answer tokens in 256
steps at temperature 1.0 with entropy remasking, leave-one-out advantages without scaling, reward
2.0 x pass rate (its 0.5 x format term is not used: the sanitiser judges the code as evaluation does).
Not published there, chosen here: 16 prompts per batch (160 samples), the SFT run's block attention
(32-token blocks, the exact block cache), the chat template around prompts, 16 verifier workers.
Mesh: one host of 8 GPUs as expert=8, like configs/qwen3_coder_30b_a3b.py (launch/rl.py runs in one
process).
"""
from jaxdiff.config import defaults as base

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/rl_qwen3_coder_30b_a3b.py: unknown variant {arg!r}")
    c = base.get_config()
    c.workdir = "runs/rl_qwen3_coder_30b_a3b"
    c.model.checkpoint = ""          # required: the SFT model with its diffusion adapter merged (see above)
    c.model.dtype = ""               # keep the checkpoint's bf16
    c.model.remat = True
    c.lora.full_training = False
    c.lora.diffusion = base.lora_head(rank=128, alpha=256.0, targets=TARGETS)   # the RL adapter
    r = c.rl
    r.suites = "synthetic-train"
    r.bend_suites = "bend-synthetic-train"
    r.prompt_format = "chat"
    r.prompts_per_batch, r.group_size = 16, 10
    r.batches = 500
    r.temperature = 1.0
    r.gen_length, r.block_length, r.steps = 256, 32, 256
    r.policy, r.attention, r.cache = "entropy", "block", "block"
    r.estimator, r.t_min, r.t_max = "coupled", 0.2, 0.8
    r.mu = 2
    r.eps_low = r.eps_high = 0.5
    r.beta = 0.01
    r.baseline, r.scale = "leave_one_out", "none"
    r.reward.correctness, r.reward.speed, r.reward.efficiency = 2.0, 0.0, 0.0
    r.workers, r.timeout_s = 16, 3.0
    r.checkpoint_every = 20
    c.optimizer.lr = 1e-6
    c.optimizer.warmup_steps = 0
    c.optimizer.decay = "constant"
    c.optimizer.weight_decay = 0.0
    c.optimizer.total_steps = r.batches * r.mu
    c.mesh.data, c.mesh.fsdp, c.mesh.expert = -1, 1, 8
    return c
