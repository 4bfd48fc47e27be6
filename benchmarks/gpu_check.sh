#!/usr/bin/env bash
# The GPU check: what the CPU machines cannot show. Runs on one GPU with jax[cuda]
# installed (the image of our lent H100 has jax, flax, optax, orbax, scikit-learn;
# ml_collections travels as a wheel in .whl/). Prints a short table at the end.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, jax.devices())"

# 1. The default experiment end to end on the GPU (accuracy, checkpoints).
python3 -m ctjax train --config configs/default.py --workdir /tmp/gpu/default 2>&1 | grep -v "^  " | tee "$OUT/default.log" | tail -4

# 2. GPT base, float32 vs bfloat16 with cuDNN fused attention: tokens/s and MFU.
for variant in "f32::" "bf16:bfloat16:cudnn"; do
  IFS=: read name dtype impl <<<"$variant"
  extra=()
  [ -n "$dtype" ] && extra+=(--config.model.dtype="$dtype")
  [ -n "$impl" ] && extra+=(--config.model.attention_impl="$impl")
  python3 -m ctjax train --config configs/gpt_stdlib.py:size=base --workdir /tmp/gpu/gpt_$name \
    --config.train_duration=300 --config.log_every=50 --config.eval_every=0 \
    --config.checkpoint.every=0 --config.final_eval_splits='("validation",)' "${extra[@]}" 2>&1 \
    | grep -v "^  " | tee "$OUT/gpt_$name.log" | tail -3
done
python3 - <<'PY'
import json, sys
peak = 989e12  # H100 SXM dense bf16 FLOP/s (float32 matmuls run as tf32 at the same order)
for name in ("f32", "bf16"):
  try:
    cfg = json.load(open(f"/tmp/gpu/gpt_{name}/config.json"))
    rows = [json.loads(l) for l in open(f"/tmp/gpu/gpt_{name}/metrics.jsonl")]
  except OSError:
    print(f"gpt {name}: no run"); continue
  m, L = cfg["model"], cfg["data"]["seq_len"]
  sps = [r["train/steps_per_s"] for r in rows if "train/steps_per_s" in r][1:]
  sps = sorted(sps)[len(sps) // 2]
  d, n = m["hidden_size"], m["num_layers"]
  params = n * (4 * d * d + 2 * d * m["mlp_dim"]) + 256 * d
  flops_per_token = 6 * params + 12 * n * d * L  # matmuls + attention, fwd+bwd
  tokens = sps * cfg["batch_size"] * L
  print(f"gpt base {name}: {sps:.2f} steps/s, {tokens:,.0f} tokens/s, "
        f"MFU {tokens * flops_per_token / peak:.1%} of bf16 peak")
PY

# 3. The training-loop benchmark: ctjax vs a hand-written jax.jit loop, on the GPU
#    (x10 longer: steps are ~15x faster than on a 2-core CPU).
python3 benchmarks/train_loop.py --repeats 3 --scale 10 2>&1 | tail -5
