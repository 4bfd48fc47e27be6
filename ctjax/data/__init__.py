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

Optional attributes a source may have:
  source.labels       int [N] class of each example: stratified fractions, and the
                      check against config.model.num_classes;
  source.location(i)  "file:line" of example i, for errors about it;
  source.label_names  the class names, when labels were names in the files;
  source.vocab_size   token ids are below this (checked against the model's).

Sources of the user's files (csv, jsonl, image_folder) open *raw* records and
define a module-level `fit(data_config, train) -> state`: vocabularies and
statistics from the training split only (JSON-able; None when there is nothing to
fit); `raw.encode(state)` then gives the source above. `splits.open_splits` runs
this and saves the state in WORKDIR/data_state.json, which a resumed run reuses.

Modules: `sources/` (one per kind), `splits.py`, `ops.py` (preprocessing),
`pipeline.py` (batches), `records.py` (bad records, label vocabularies),
`tokenizer.py` and `images.py` (shared by sources and ops).
"""
