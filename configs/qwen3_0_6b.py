"""Qwen3-0.6B -> a small diffusion coder: frozen bf16 base, LoRA on all three heads, SFT data,
bidirectional attention.

    python tools/convert_hf.py --hf_dir /ckpt/Qwen3-0.6B --out_dir /ckpt/q06b-jd
    python launch/train.py --config configs/qwen3_0_6b.py --config.model.checkpoint=/ckpt/q06b-jd \\
        --config.data.path=/data/sft.jsonl
"""
from jaxdiff.config import defaults as base


def reference_hf_config() -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
            "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
            "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16", "eos_token_id": 151645,
            "bos_token_id": 151643, "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
            "attention_bias": False, "attention_dropout": 0.0}


def get_config(arg=None):
    c = base.get_config()
    c.workdir = "runs/qwen3_0_6b"
    c.model.dtype = "bfloat16"
    c.lora.full_training = False
    c.objective.sft = True
    c.objective.ar_weight = 0.5
    c.objective.length_weight = 0.1
    c.data.kind = "sft"
    c.data.seq_len = 1024
    c.data.batch_size = 32
    c.optimizer.lr = 2e-4
    c.train.peak_tflops = 989.0
    return c
