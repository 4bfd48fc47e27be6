"""A ResNet-style CNN on scikit-learn's handwritten digits (real data, offline).

  make train
  # = ctjax train --config configs/default.py --workdir runs/default

1,797 8x8 grey images of digits 0-9, divided 80/10/10 (seeded, stratified) into
train/validation/test; 600 steps of batch 64 (about 27 epochs).

Measured (2026-11-27, 2-core AMD EPYC VM, jax 0.10.2, the command above):
  1 CPU device (as `make train` runs):  test accuracy 0.9888 (178/180), test loss
      0.0607, validation accuracy 0.9888; 22.1 s wall for the whole command
      (start-up, compilation, 600 steps, 3 evaluations, checkpoints), ~70 steps/s.
  8 fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8): test
      accuracy 0.9888 (178/180), test loss 0.0594, ~54 steps/s; 28 s wall. (The
      reductions run in another order on 8 devices, so the last digits differ.)

Sweeps (get_sweeps below; 2026-11-30, the same VM shared with other work):
  python experiments/sweep.py --config configs/default.py --sweep lr --workers 2 \
      --workdir runs/sweep-lr
    2.5 min; lr 0.01: validation 0.9944, test 0.978; 0.003: 0.9888, test 0.989;
    0.001: 0.9832, test 0.983.
  python experiments/sweep.py --config configs/default.py:steps=300 --sweep tune \
      --workers 2 --workdir runs/sweep-tune --config.eval_every=50
    12 trials in 10 min, 8 of them pruned at steps 50-150 by the median rule;
    best validation 0.9944 (lr 0.0038, weight decay 7e-4, 2 blocks per stage).
  --population (benchmarks/population.py): the lr_seed sweep's 6 trials in one
    program: 2.26x the trials/hour of one by one on an H200, 0.64x on this CPU.
"""
from ml_collections import ConfigDict

from ctjax import search
from ctjax import sweeps
from ctjax.config import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, steps=600)
  c = ConfigDict()
  c.seed = 0
  c.data = dict(source="sklearn_datasets", name="digits",
                split_fractions={"train": 0.8, "validation": 0.1, "test": 0.1},
                split_seed=0, stratify=True,
                # In memory, a batch costs less than handing it between threads.
                num_threads=1, prefetch=0)
  c.model = dict(name="cnn", num_classes=10, widths=(32, 64), blocks_per_stage=1,
                 norm_groups=8)
  c.batch_size = 64
  c.train_duration = arg.steps
  c.optim = dict(name="adamw", lr=3e-3, weight_decay=1e-4, clip_norm=1.0,
                 schedule=dict(name="warmup_cosine", warmup="30 steps"))
  c.log_every = 100
  c.eval_every = 200
  c.checkpoint = dict(every=200, keep=2, best_metric="validation/accuracy")
  return c


def get_sweeps(arg: str | None = None) -> dict[str, list[dict]]:
  """Named sweeps of this config: lists of overrides (see ctjax/sweeps.py)."""
  del arg  # The same sweeps for every size.
  lr = sweeps.values("optim.lr", [1e-3, 3e-3, 1e-2])
  return {
      "lr": lr,
      "lr_seed": sweeps.product(lr, sweeps.values("seed", [0, 1])),
      "width": sweeps.zip(sweeps.values("model.widths", [(16, 32), (32, 64)]),
                          sweeps.values("optim.lr", [3e-3, 3e-3])),
      # Bayesian search; a trial whose validation accuracy at an evaluation
      # (every config.eval_every steps) is below the median of earlier trials'
      # at that step stops there.
      "tune": search.Search(
          space={"optim.lr": search.log_uniform(3e-4, 3e-2),
                 "optim.weight_decay": search.log_uniform(1e-6, 1e-2),
                 "model.blocks_per_stage": search.integer(1, 2)},
          objectives={"validation/accuracy": "max"},
          sampler="tpe", pruner="median", trials=12,
          pruner_options={"n_startup_trials": 3, "n_warmup_steps": 0}),
      # Accuracy against speed: a Pareto front by NSGA-II.
      "pareto": search.Search(
          space={"optim.lr": search.log_uniform(3e-4, 3e-2),
                 "model.blocks_per_stage": search.integer(1, 2),
                 "model.norm_groups": search.categorical([4, 8])},
          objectives={"validation/accuracy": "max",
                      "train/examples_per_s": "max"},
          sampler="nsga2", trials=12),
  }
