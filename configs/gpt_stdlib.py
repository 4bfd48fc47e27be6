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
