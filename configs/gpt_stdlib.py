"""A byte-level GPT trained on the Python standard library's own source files.

  ctjax train --config configs/gpt_stdlib.py:size=small --workdir runs/gpt_stdlib

Real text, offline: the top-level `*.py` files of the Python that runs ctjax (168
files, 4.7 MB for CPython 3.11), divided into train/validation/test 90/5/5 by a
hash of each file's name, so that a file never straddles two splits. One token is
one byte (vocab 256), so the loss in bits is bits per byte: `validation/` and
`test/bits_per_byte` are reported at every evaluation. A uniform guess is 8
bits/byte; for scale, gzip -9 compresses the validation split (282,675 bytes) to
1.89 bits/byte and xz -9 to 1.68, each seeing the whole split at once where the
model sees 128 bytes.

Sizes (`:size=NAME`; `steps=N` overrides the length):
  tiny   seconds; for tests
  small  minutes on a 2-core CPU: 2 layers of width 128 on 128-byte windows, 800
         steps of 32 windows (3.3M bytes, 0.8 epochs)
  base   a GPU: 12 layers of width 512 on 512-byte windows (38M parameters),
         20,000 steps of 64 windows; not measured yet
  1b     an accelerator: 24 layers of width 2048 (16 heads, MLP 8192) on
         2048-byte windows, 1.21B parameters, 300 steps of 16 windows; bfloat16
         compute, scanned layers, remat="dots" (matmul outputs kept), FSDP over
         every device. 277 TFLOP a step (6 per parameter per token plus
         attention). For a pod slice, raise the batch to a multiple of its
         chips: --config.batch_size=256.

`ctjax compile` figures for size=1b on a 2-core AMD EPYC VM, 2026-11-30 (libtpu
0.0.42.1 for the TPUs; GPUs are estimates on fake CPU devices), per device:

  target    batch  state      temporaries  total / memory          compile
  v5e-256   256    58 MiB     2.87 GiB     2.96 / 16 GiB (18%)     137 s
  v5p-128   256    220 MiB    12.16 GiB    12.41 / 95 GiB (13%)    196 s
  v4-32     16     869 MiB    3.65 GiB     4.52 / 32 GiB (14%)     57 s
  h100x8    64     1.69 GiB   36.07 GiB    37.77 / 59.7 GiB pool   23 s (estimate)
  h200x1    16     13.51 GiB  78.83 GiB    92.34 / 105.3 GiB pool  16 s (estimate)

(ctjax compile --config configs/gpt_stdlib.py:size=1b --topology TARGET
--config.batch_size=BATCH.) The CPU estimates' temporaries are XLA:CPU's, with
XLA's attention materialising every [2048, 2048] score matrix in float32; on a
GPU, cuDNN's fused attention (--config.model.attention_impl=cudnn) does not. Not
yet run on a GPU: benchmarks/gpu_check.sh measures its MFU.

Measured, size=small, with the command above, on a 2-core AMD EPYC VM (no GPU, 1
CPU device, jax 0.10.2, CPython 3.11.7's standard library):
  validation/loss 1.496, validation/bits_per_byte 2.158 (2.391 at step 400)
  test/loss 1.561, test/bits_per_byte 2.251
  226 s wall on the idle machine, ~4.1 steps/s.
"""
from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.errors import UserError

# size -> (hidden, layers, heads, seq_len, batch, steps, lr)
_SIZES = {
    "tiny": (32, 1, 2, 32, 16, 30, 3e-3),
    "small": (128, 2, 4, 128, 32, 800, 3e-3),
    "base": (512, 12, 8, 512, 64, 20000, 6e-4),
    "1b": (2048, 24, 16, 2048, 16, 300, 3e-4),
}


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, size="small", steps=0)
  if arg.size not in _SIZES:
    raise UserError(f"config argument size={arg.size!r}: choose one of "
                    f"{', '.join(_SIZES)}")
  hidden, num_layers, heads, seq_len, batch, steps, lr = _SIZES[arg.size]
  c = ConfigDict()
  c.seed = 0
  c.data = dict(source="text", files="stdlib:*.py", seq_len=seq_len,
                splits={"train": "[0%:90%]", "validation": "[90%:95%]",
                        "test": "[95%:100%]"},
                # Packed text is in memory: a batch costs less than handing
                # it between threads.
                num_threads=1, prefetch=0)
  c.model = dict(name="gpt", vocab_size=256, hidden_size=hidden,
                 num_layers=num_layers, num_heads=heads, mlp_dim=4 * hidden)
  if arg.size == "1b":
    # Built to keep an accelerator busy: bfloat16 products (float32 parameters,
    # optimizer state, softmax, norms and loss), one scanned block to compile,
    # matmul outputs kept for the backward pass and the rest recomputed, and
    # parameters and optimizer state sharded over every device (FSDP). Others:
    # --config.model.remat=none|full, --config.model.attention_impl=cudnn|xla.
    c.model.update(dtype="bfloat16", scan_layers=True, remat="dots")
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.batch_size = batch
  c.eval_batch_size = 256  # fewer, larger evaluation steps; memory is no concern
  c.train_duration = arg.steps or steps
  c.optim = dict(name="adamw", lr=lr, weight_decay=0.1, clip_norm=1.0, b2=0.95,
                 schedule=dict(name="warmup_cosine",
                               warmup=max(c.train_duration // 20, 1),
                               end_fraction=0.1))
  c.bits_per_byte = True
  c.log_every = max(c.train_duration // 20, 1)
  c.eval_every = max(c.train_duration // 4, 1)
  c.checkpoint = dict(every=c.eval_every, keep=2,
                      best_metric="validation/bits_per_byte", best_mode="min")
  return c
