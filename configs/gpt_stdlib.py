"""A byte-level GPT trained on the Python standard library's own source files.

  ctjax train --config configs/gpt_stdlib.py:size=small --workdir runs/gpt_stdlib

Real text, offline: the top-level `*.py` files of the Python that runs ctjax
(168 files, 4.7 MB for CPython 3.11), divided into train/validation/test 90/5/5 by
a hash of each file's name, so a file never straddles two splits. One token is one
byte (vocab 256), so the loss in bits is bits per byte; `validation/bits_per_byte`
and `test/bits_per_byte` are reported at every evaluation. A uniform guess is 8
bits/byte; gzip -9 reaches about 1.9 on this text.

Sizes (`:size=NAME`):
  tiny   seconds; for tests
  small  a few minutes on a 2-core CPU
  base   a GPU: 12 layers of width 512 on 512-byte windows

Measured (size=small, CPython 3.11.7 stdlib, 2-core CPU, 1 CPU device, jax 0.10.2):
  MEASURED_PLACEHOLDER
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
                num_threads=1, prefetch=2)
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
