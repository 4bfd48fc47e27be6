"""Data: sources of examples, splits, preprocessing and the input pipeline.

A *source* is a random-access collection of examples, each a dict of NumPy arrays:

  len(source) -> int
  source[i]   -> {"inputs": ..., "label": ..., optional "mask": ...}
  source.get_batch(indices) (optional) -> the same dict, stacked; the fast path
                                           for in-memory sources.

Random access is what makes training resumable without replay: the pipeline asks
for exactly the examples of step k (see `pipeline.train_indices`).

`config.data.source = "NAME"` imports `ctjax.data.sources.NAME` and calls its
`open_source(data_config, split)` with the split spec from `config.data.splits`,
e.g. {"train": "train[:90%]", "validation": "train[90%:]"} for TFDS or file paths
for files. Sources without native splits are divided by `config.data.split_fractions`
(seeded, optionally stratified: see `splits.py`).

Every example's keys: `inputs` (the model's input), `label` (int class, or int token
targets [L] for language models) and, for token-level tasks, `mask` [L] (1 where the
target counts in the loss). The pipeline adds or multiplies in the padding mask.
"""
