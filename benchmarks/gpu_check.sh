#!/usr/bin/env bash
# The GPU check: what the CPU machines cannot show, in one call, one table at the end.
#   bash benchmarks/gpu_check.sh                     # on one GPU (an H200 or H100)
#   GPT_LARGE=configs/gpt_stdlib.py:size=tiny STEPS=12 LOOP="--only host --repeats 1" \
#     bash benchmarks/gpu_check.sh                   # a smoke test of the script on CPU
#
# 1. the default experiment end to end (accuracy, checkpoints) on the GPU;
# 2. the ~1B GPT (bf16, scanned layers, remat of everything but the matmuls,
#    FSDP): MFU from the trainer's own log, with JAX's choice of attention and
#    with cuDNN's fused attention; a jax.profiler trace of 3 steps of the first,
#    summarised (ctjax/profiling.py);
# 3. the training loop against a hand-written one: default config and GPT small.
# Needs jax[cuda], flax, optax, orbax (ml_collections etc. travel as wheels in
# .whl/ when the image lacks them). Results go in benchmarks/README.md.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
GPT_LARGE=${GPT_LARGE:-configs/gpt_stdlib.py:size=1b}
STEPS=${STEPS:-40}
LOOP=${LOOP:---repeats 3 --scale 10}
RUNS=${RUNS:-/tmp/gpu_check}
rm -rf "$RUNS"; mkdir -p "$RUNS"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"

# 1. The default experiment.
python3 -m ctjax train --config configs/default.py --workdir "$RUNS/default" 2>&1 \
  | grep -v "^  " | tail -3

# 2. The large GPT, 10-step logs; the first log interval holds compilation.
for impl in default cudnn; do
  extra=()
  [ "$impl" = cudnn ] && extra+=(--config.model.attention_impl=cudnn --config.profile.steps=0)
  python3 -m ctjax train --config "$GPT_LARGE" --workdir "$RUNS/gpt_$impl" \
    --config.train_duration="$STEPS" --config.log_every=10 --config.eval_every=0 \
    --config.final_eval_splits='()' --config.checkpoint.every=0 \
    --config.profile.start_step=20 --config.profile.steps=3 "${extra[@]}" \
    > "$RUNS/gpt_$impl.log" 2>&1 || echo "gpt $impl: FAILED, see $RUNS/gpt_$impl.log"
  grep -E "^(train step|mesh|  total|ctjax: error)" "$RUNS/gpt_$impl.log"
done
[ -f "$RUNS/gpt_default/profile/summary.txt" ] && head -16 "$RUNS/gpt_default/profile/summary.txt"

# 3. ctjax's loop against a hand-written one.
python3 benchmarks/train_loop.py $LOOP 2>&1 | tee "$RUNS/loop.log" | tail -6

# The table.
python3 - "$RUNS" <<'PY'
import json, os, statistics, sys
runs = sys.argv[1]
print("\n| measurement | value |\n| --- | ---: |")
for impl in ("default", "cudnn"):
  try:
    rows = [json.loads(l) for l in open(os.path.join(runs, f"gpt_{impl}", "metrics.jsonl"))]
  except OSError:
    print(f"| GPT large, {impl} attention | no run |"); continue
  logs = [r for r in rows if "train/steps_per_s" in r][1:]  # after compilation
  if not logs:
    print(f"| GPT large, {impl} attention | too few steps |"); continue
  median = lambda k: statistics.median(r[k] for r in logs if k in r)
  mfu = f"MFU {median('train/mfu'):.1%}, " if any("train/mfu" in r for r in logs) else ""
  print(f"| GPT large, {impl} attention | {mfu}{median('train/tokens_per_s'):,.0f} tokens/s, "
        f"{median('train/device_tflops_per_s'):,.3g} TFLOP/s per device |")
# train_loop.py's rows: config, steps, ctjax steps/s, hand steps/s, ratio, best, ...
for line in open(os.path.join(runs, "loop.log")):
  cells = line.split()
  if len(cells) > 5 and cells[1].isdigit():
    print(f"| loop, ctjax / hand-written, {cells[0]} | {cells[4]} (best {cells[5]}) |")
PY
