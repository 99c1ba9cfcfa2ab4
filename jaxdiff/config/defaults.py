"""Defaults shared by every training config; each field is documented in docs/configs.md.
`configs/*.py` start from `get_config()` and override what they change."""
import ml_collections


def model_init(**kw) -> ml_collections.ConfigDict:
    """Architecture of a from-scratch model (ModelConfig fields; vocab comes from the tokenizer)."""
    d = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, num_experts=0, num_experts_per_tok=0, moe_intermediate_size=0,
             norm_topk_prob=False, decoder_sparse_step=1, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=False, max_position_embeddings=4096)
    d.update(kw)
    return ml_collections.ConfigDict(d)


def lora_head(rank=16, alpha=32.0, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj")):
    return ml_collections.ConfigDict(dict(rank=rank, alpha=alpha, dropout=dropout, targets=",".join(targets)))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/default"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        checkpoint="",            # HF folder or converted checkpoint; "" = from scratch (model.init)
        dtype="float32",          # params/activations of a from-scratch model; "" keeps a checkpoint's own
        init=model_init(),
        attention_impl="auto",    # auto (by platform) | reference | chunked | fused | cudnn | splash
        remat=False,
        remat_policy="full",      # with remat: full (recompute everything) | dots (keep projection outputs)
        moe_dispatch="auto",      # auto | gspmd | all_to_all (expert parallelism over mesh.expert)
        moe_capacity_factor=1.25))  # all_to_all in the training loss only: slots per expert per device
                                    # = cf * tokens * k / E (Switch's 1.25); 0 = dropless; sampling/eval/RL never drop
    c.tokenizer = ml_collections.ConfigDict(dict(
        path="",                  # "" = the checkpoint folder's tokenizer, or train a BPE (from scratch)
        vocab_size=4096,          # for a trained BPE
        train_files=300))         # documents the BPE is trained on
    c.mask_token = ml_collections.ConfigDict(dict(trainable=False))
    c.lora = ml_collections.ConfigDict(dict(
        full_training=False,      # True: every parameter trains (from scratch); False: adapters only
        ar=lora_head(), diffusion=lora_head(), length=lora_head(rank=8, alpha=16.0)))
    c.length_head = ml_collections.ConfigDict(dict(edges="32,64,128,256,512,1024", hidden=256))
    c.objective = ml_collections.ConfigDict(dict(
        kind="masked",            # masked (LLaDA/MDLM) | block_diffusion (BD3LM: x0 ⊕ xt, one t per block)
        schedule="linear", schedule_exponent=2.0, time_eps=1e-3,
        time_max=1.0,             # t ∈ (time_eps, time_max]; BD3LM's clipped range, e.g. 0.3 / 0.8
        block_size_schedule="",   # block_diffusion: "SIZE@STEP,..." growing blocks (last = block_size)
        antithetic=True, min_masking_rate=0.0,
        reweight_cap=0.0, loss="llada", label_smoothing=0.1, span_prob=0.0, random_replace=0.0,
        shorten_prob=0.0, stage2_step=-1, edit_fraction=0.1, edit_weight=1.0, attention="bidirectional",
        block_size=32, sft=False, ar_weight=0.0, diffusion_weight=1.0, length_weight=0.0, vocab_chunk=8192,
        ar_only_steps=0,
        router_aux_coef=-1.0,     # MoE load-balancing loss weight; -1 = the checkpoint's router_aux_loss_coef
        router_z_coef=0.0))       # MoE router z-loss weight
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-4, warmup_steps=100, total_steps=10000, decay="cosine", end_lr_ratio=0.1, b1=0.9,
        b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=1.0, grad_accum=1))
    c.data = ml_collections.ConfigDict(dict(kind="code", path="", text_field="", seq_len=256, batch_size=8,
                                            eval_permille=20, seed=0, shuffle_window=1024,
                                            answer_length=0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, log_every=10, eval_every=200, eval_batches=8, checkpoint_every=200, keep=3,
        resume_step=-1,           # -1: latest valid checkpoint; N: that step
        peak_tflops=0.0))         # per device, for the MFU estimate (0: not logged)
    c.sample = ml_collections.ConfigDict(dict(prompt="def main():\n", gen_length=64, block_length=32, steps=64,
                                              policy="low_confidence", temperature=0.0))
    c.rl = rl_defaults()
    return c


def rl_defaults() -> ml_collections.ConfigDict:
    """On-policy RL (launch/rl.py; docs/rl.md, docs/configs.md): what is sampled, how it is scored and
    how the RL adapter (the diffusion head's LoRA, `lora.diffusion`) learns; its optimizer is `optimizer`."""
    return ml_collections.ConfigDict(dict(
        mode="policy_gradient",     # policy_gradient | order_distill (rl/order_distill.py; docs/rl.md)
        # tasks and prompts
        suites="synthetic-train",   # comma-separated suite names (jaxdiff.eval.load_suite) or .jsonl paths
        bend_suites="",             # Bend suites, joined when `bend` and `hvm` are on PATH (else a warning)
        prompt_format="raw",        # raw | chat (the tokenizer's chat template)
        prompt_length=0,            # prompt width in tokens (left-padded; longer prompts skipped); 0 = the longest
        prompts_per_batch=8,        # P prompts per batch, drawn from seed and batch index
        group_size=8,               # G samples per prompt
        batches=100,                # batches to run (each: rollout, verify, mu updates)
        # the rollout sampler (jaxdiff.sample; no guidance; stops at EOS)
        temperature=1.0, gen_length=64, block_length=32,
        steps=-1,                   # denoising steps over the answer; -1 = one per token
        policy="low_confidence", attention="bidirectional", cache="auto",
        # order_distill: per example, n_orders orders of its reference answer, the keep_orders most likely
        # kept; Gumbel-top-k over log p(true token) / order_temperature (0: most confident first)
        n_orders=8, keep_orders=2, order_temperature=1.0,
        # the likelihood estimator (rl/estimators.py)
        estimator="trace_replay", shrink=1, t_min=0.2, t_max=0.8, prompt_mask_prob=0.15,
        # the clipped loss (rl/objective.py)
        mu=1,                       # inner iterations per batch (a new estimator key each)
        minibatch_size=0,           # rows per optimizer step: 0 = one step over the whole batch; M = the kept
                                    # rows (dropped groups left out), shuffled, in steps of M per iteration
        eps_low=0.2, eps_high=0.2, beta=0.0, log_ratio_clamp=20.0, normalization="seq-mean-token-mean",
        log_kl=True,                # score the reference (adapter off) for the KL metric even when beta = 0
        # advantages (rl/advantages.py)
        baseline="mean", scale="none",
        # rewards (rl/rewards.py): w_c * C + [passed] * (w_s * S + w_e * E)
        reward=ml_collections.ConfigDict(dict(correctness=1.0, speed=0.0, efficiency=0.0, partial_credit=True,
                                              itrs_scale=1e6, cpu_ms_scale=100.0)),
        # the verifier pool
        workers=2, timeout_s=3.0, memory_mb=1024, sanitize=True,
        # the loop
        overlap=True,               # sample batch n + 1 while the pool verifies batch n (one batch stale)
        log_every=1, log_samples=4,  # tensorboard every N batches; completions shown as text per batch
        checkpoint_every=10, keep=3,
        resume_batch=-1))           # -1: the newest readable checkpoint; N: the one after N batches
