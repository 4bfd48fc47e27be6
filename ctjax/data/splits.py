"""Opening the splits a config names, and dividing one source by fractions.

Two ways to get train/validation/test:

  config.data.splits = {"train": "train[:90%]", "validation": "train[90%:]"}
      each value is handed to the source's `open_source` (TFDS split strings,
      file paths, ...);
  config.data.split_fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
      the source is opened once (split spec "all") and divided by a permutation
      seeded by `config.data.split_seed`, stratified by label when
      `config.data.stratify` is set.

With split_fractions, `config.data.cross_validation = dict(folds=5, fold=i,
stratify=False, group_column="", seed=0)` pools the train and validation parts,
divides them into `folds` disjoint folds (stratified by label, or keeping each
value of a group column together) and makes fold i "validation", the rest
"train"; the test part stays held out. `ctjax cv` (ctjax/cv.py) trains each fold.

Sources whose module defines `fit` (tables, labelled files) are then *encoded*:
vocabularies and statistics are fitted on the training split only, saved as
WORKDIR/data_state.json, and applied to every split; a resumed run (or a later
evaluation) loads that file instead of fitting again, so it sees the same mapping.
Finally every split's labels are checked against the model (`check_labels`).

`config.data.replay = dict(workdir=PARENT, fraction=0.3, seed=0)` mixes old data
into the training split, for a model warm-started from the run in PARENT to keep
what it learned (`ctjax adapt`, ctjax/adapt.py): a seeded sample of PARENT's own
training split (opened as PARENT's config.json says, replayed parts of its own
included) is appended to "train", so that `fraction` of the mixed split is old.
The splits are then encoded as PARENT's were (its data_state.json, copied into
this run's workdir), never refitted: the warm-started model sees each feature as
it learned it.

Either way `describe` gives a record (sizes, specs and a digest of the indices)
that the trainer writes to WORKDIR/splits.json, so a split can be reproduced and
checked.
"""
import hashlib
import json
import os
from typing import Any

import numpy as np

from ctjax import by_name
from ctjax import writers
from ctjax.data import records
from ctjax.data import slicing
from ctjax.errors import UserError

# Vocabularies and statistics fitted on the training split, in the workdir.
STATE_FILE = "data_state.json"


class Subset:
  """The examples `indices` of `source`, in that order."""

  def __init__(self, source: Any, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    if hasattr(source, "get_batch"):
      self.get_batch = lambda idx, *length: source.get_batch(self.indices[idx],
                                                             *length)
    for name in ("labels", "lengths"):
      if getattr(source, name, None) is not None:
        setattr(self, name, np.asarray(getattr(source, name))[self.indices])
    if hasattr(source, "location"):
      self.location = lambda i: source.location(int(self.indices[i]))
    if getattr(source, "columns", None):
      self.columns = {k: np.asarray(v)[self.indices] for k, v in source.columns.items()}
    for name in ("label_names", "label_mean", "label_std", "vocab_size",
                 "length_buckets", "feature_names"):
      if hasattr(source, name):
        setattr(self, name, getattr(source, name))

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.source[int(self.indices[i])]


class Concatenation:
  """The examples of `parts`, one part after the other (a training split and
  its replayed examples), encoded alike."""

  def __init__(self, parts: list[Any]):
    self.parts = parts
    self.offsets = np.cumsum([0] + [len(p) for p in parts])
    for name in ("labels", "lengths"):
      if all(getattr(p, name, None) is not None for p in parts):
        setattr(self, name, np.concatenate([getattr(p, name) for p in parts]))
    if all(hasattr(p, "get_batch") for p in parts):
      self.get_batch = self._get_batch
    if all(hasattr(p, "location") for p in parts):
      self.location = lambda i: self.parts[self._part(i)].location(
          i - int(self.offsets[self._part(i)]))
    for name in ("label_names", "label_mean", "label_std", "vocab_size",
                 "length_buckets", "feature_names"):
      if hasattr(parts[0], name):
        setattr(self, name, getattr(parts[0], name))

  def _part(self, i: int) -> int:
    return int(np.searchsorted(self.offsets, i, side="right")) - 1

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    part = self._part(int(i))
    return self.parts[part][int(i) - int(self.offsets[part])]

  def _get_batch(self, indices: np.ndarray, *length) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    part = np.searchsorted(self.offsets, indices, side="right") - 1
    batch = {}
    for k in np.unique(part):
      chosen = part == k
      got = self.parts[k].get_batch(indices[chosen] - self.offsets[k], *length)
      for key, value in got.items():
        if key not in batch:
          batch[key] = np.empty((len(indices), *value.shape[1:]), value.dtype)
        batch[key][chosen] = value
    return batch


def fraction_indices(num_examples: int, fractions: dict[str, float], *,
                     seed: int, labels: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
  """Divides range(num_examples) into named parts by fraction.

  With `labels`, each class is divided separately (stratified), so every part keeps
  the class balance of the whole; parts are then shuffled with the same seed.
  """
  names = list(fractions)
  rng = np.random.default_rng(seed)
  groups = ([np.arange(num_examples)] if labels is None else
            [np.flatnonzero(labels == c) for c in np.unique(labels)])
  parts = {name: [] for name in names}
  for group in groups:
    group = rng.permutation(group)
    bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(group))
    for name, lo, hi in zip(names, np.r_[0, bounds[:-1]], bounds):
      parts[name].append(group[int(lo):int(hi)])
  return {name: rng.permutation(np.concatenate(p)) for name, p in parts.items()}


# config.data.cross_validation's options and their defaults.
CROSS_VALIDATION = {"folds": 5, "fold": 0, "stratify": False, "group_column": "",
                    "seed": 0}
# The parts that cross-validation pools and divides into folds; every other part
# of config.data.split_fractions (the test part) is held out, the same in each fold.
POOLED = ("train", "validation")


def cross_validation_options(data_config: Any) -> dict[str, Any]:
  """config.data.cross_validation with its defaults filled in, checked."""
  given = data_config.get("cross_validation")
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  unknown = set(given) - set(CROSS_VALIDATION)
  if unknown:
    raise UserError(f"config.data.cross_validation.{sorted(unknown)[0]}: unknown "
                    f"option; the options are {', '.join(CROSS_VALIDATION)}")
  options = {**CROSS_VALIDATION, **given}
  for key, default in CROSS_VALIDATION.items():
    if type(options[key]) is not type(default):
      raise UserError(f"config.data.cross_validation.{key}={options[key]!r}: "
                      f"expected a {type(default).__name__}")
  folds, fold = options["folds"], options["fold"]
  if folds < 2:
    raise UserError(f"config.data.cross_validation.folds={folds}: cross-validation "
                    "needs at least 2 folds (ctjax cv --folds 5)")
  if not 0 <= fold < folds:
    raise UserError(f"config.data.cross_validation.fold={fold}: folds are numbered "
                    f"0..{folds - 1}")
  if not data_config.get("split_fractions"):
    # Explicit splits are separate sources (files, TFDS splits) with no common
    # index to divide into folds; one source divided by fractions has one.
    raise UserError("config.data.cross_validation: needs config.data.split_fractions "
                    "(one source, divided), not config.data.splits; e.g. "
                    "split_fractions={'train': 0.85, 'test': 0.15}")
  if "train" not in data_config.split_fractions:
    raise UserError("config.data.split_fractions: cross-validation divides the "
                    "'train' (and 'validation') parts into folds; name one 'train'")
  return options


def fold_indices(num_examples: int, folds: int, *, seed: int,
                 labels: np.ndarray | None = None,
                 groups: np.ndarray | None = None) -> list[np.ndarray]:
  """Divides range(num_examples) into `folds` disjoint parts, each sorted.

  scikit-learn's splitters, shuffled with `seed`: KFold; with `labels`
  StratifiedKFold (each fold keeps the class balance); with `groups` GroupKFold
  (a group's examples all sit in one fold); with both StratifiedGroupKFold. They
  are the reference implementations that people check folds against.
  """
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  units, what = (num_examples, "examples") if groups is None else (
      len(np.unique(groups)), "groups")
  if folds > units:
    raise UserError(f"config.data.cross_validation.folds={folds}: the train and "
                    f"validation parts hold only {units} {what}; use at most "
                    f"{units} folds")
  if groups is None:
    kind = (model_selection.StratifiedKFold if labels is not None else
            model_selection.KFold)
  else:
    kind = (model_selection.StratifiedGroupKFold if labels is not None else
            model_selection.GroupKFold)
  splitter = kind(folds, shuffle=True, random_state=seed)
  try:
    return [np.sort(held) for _, held in
            splitter.split(np.zeros(num_examples), labels, groups)]
  except ValueError as e:  # Say, stratifying float (regression) targets.
    raise UserError(f"config.data.cross_validation: {e}") from None


def cross_validation_parts(data_config: Any, whole: Any,
                           parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Fold `fold` of the pooled train and validation parts becomes "validation",
  the other folds "train"; the other parts (test) stay as they are.

  With a group column (a patient id, say) the parts themselves are drawn again by
  whole groups, with the same fractions and seed: a patient whose rows sat on both
  sides of the test split would make the test score too good.
  """
  options = cross_validation_options(data_config)
  groups = None
  if options["group_column"]:
    groups = _group_values(data_config, whole, options["group_column"])
    names, ids = np.unique(groups, return_inverse=True)
    by_group = fraction_indices(len(names), dict(data_config.split_fractions),
                                seed=data_config.get("split_seed", 0))
    parts = {name: np.flatnonzero(np.isin(ids, g)) for name, g in by_group.items()}
  labels = None
  if options["stratify"]:
    labels = getattr(whole, "labels", None)
    if labels is None:
      raise UserError(f"config.data.cross_validation.stratify=True: source "
                      f"{data_config.source!r} has no labels to stratify by; "
                      "leave out --stratified")
  pool = np.sort(np.concatenate([parts[n] for n in POOLED if n in parts]))
  folds = fold_indices(len(pool), options["folds"], seed=options["seed"],
                       labels=None if labels is None else np.asarray(labels)[pool],
                       groups=None if groups is None else groups[pool])
  held = folds[options["fold"]]
  return {"train": pool[np.setdiff1d(np.arange(len(pool)), held)],
          "validation": pool[held],
          **{name: p for name, p in parts.items() if name not in POOLED}}


def _group_values(data_config: Any, whole: Any, column: str) -> np.ndarray:
  """Each example's value in `column`: a raw table column, or an array field."""
  columns = getattr(whole, "columns", None) or getattr(whole, "arrays", None) or {}
  key = f"config.data.cross_validation.group_column={column!r}"
  if column not in columns or np.ndim(columns[column]) != 1:
    raise UserError(f"{key}: source {data_config.source!r} has no such column "
                    f"(it has {', '.join(columns) or 'none'}); name one")
  values = np.asarray(columns[column])
  missing = np.flatnonzero([v is None for v in values])
  if len(missing):
    where = (whole.location(int(missing[0])) if hasattr(whole, "location") else
             f"example {missing[0]}")
    raise UserError(f"{where}: no value in the group column ({key}); fill it in")
  return values


def _source_module(data_config: Any):
  name = data_config.source
  module = by_name.find("ctjax.data.sources", name)
  if module is None:
    raise UserError(f"config.data.source={name!r}: no module "
                    f"ctjax/data/sources/{name}.py; choose one of "
                    f"{', '.join(by_name.names('ctjax.data.sources'))}")
  return module


def open_splits(data_config: Any, *, state_dir: str | None = None,
                write_state: bool = True, num_classes: int | None = None,
                vocab_size: int | None = None) -> dict[str, Any]:
  """Opens every split the config names: {"train": source, "validation": ...}.

  Args:
    data_config: `config.data`.
    state_dir: where the fitted vocabularies and statistics live (the workdir);
      loaded from there when present, else fitted and written there. None: fit
      and keep nothing.
    write_state: whether this process writes them (process 0 of several).
    num_classes: the model's number of classes, to check class labels against.
    vocab_size: the model's vocabulary, to check a tokenizer's against.

  Returns:
    The splits, each a source ready for the pipeline.
  """
  module = _source_module(data_config)
  cross_validation = bool(data_config.get("cross_validation"))
  if cross_validation:
    cross_validation_options(data_config)  # Checked before any data is read.
  fractions = data_config.get("split_fractions")
  if fractions:
    fractions = dict(fractions)
    total = sum(fractions.values())
    if any(f <= 0 for f in fractions.values()) or total > 1 + 1e-9:
      raise UserError(f"config.data.split_fractions={fractions}: fractions must be "
                      "positive and sum to at most 1")
    whole = module.open_source(data_config, "all")
    labels = getattr(whole, "labels", None) if data_config.get("stratify") else None
    if data_config.get("stratify") and labels is None:
      raise UserError(f"config.data.stratify=True: source {data_config.source!r} "
                      "has no labels to stratify by; set stratify=False")
    parts = fraction_indices(len(whole), fractions,
                             seed=data_config.get("split_seed", 0), labels=labels)
    if cross_validation:
      parts = cross_validation_parts(data_config, whole, parts)
    splits = {name: Subset(whole, idx) for name, idx in parts.items()}
  else:
    splits = {name: module.open_source(data_config, spec)
              for name, spec in dict(data_config.splits).items()}
  _check_not_empty(data_config, splits)
  if hasattr(module, "fit"):
    state = _load_or_fit(module, data_config, splits.get("train"), state_dir,
                         write_state)
    if state is not None:
      splits = _encode(splits, state)
  splits = check_labels(data_config, splits, num_classes=num_classes,
                        vocab_size=vocab_size)
  _check_not_empty(data_config, splits)
  if data_config.get("replay"):
    splits["train"] = _with_replay(data_config, splits["train"],
                                   num_classes=num_classes, vocab_size=vocab_size)
  return slicing.attach(data_config, splits)  # config.data.slices


# config.data.replay's options and their defaults.
REPLAY = {"workdir": "", "fraction": 0.0, "seed": 0}


def replay_options(data_config: Any) -> dict[str, Any]:
  """config.data.replay with its defaults filled in, checked."""
  given = data_config.get("replay")
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  for key, value in given.items():
    if key not in REPLAY:
      raise UserError(f"config.data.replay.{key}: unknown option; the options are "
                      f"{', '.join(REPLAY)}")
    if not isinstance(value, type(REPLAY[key])) or isinstance(value, bool):
      raise UserError(f"config.data.replay.{key}={value!r}: expected a "
                      f"{type(REPLAY[key]).__name__}")
  options = {**REPLAY, **given}
  if not 0 <= options["fraction"] < 1:
    raise UserError(f"config.data.replay.fraction={options['fraction']}: the share "
                    "of old examples in the training split; give 0 <= f < 1")
  path = os.path.join(options["workdir"], "config.json")
  if not os.path.exists(path):
    raise UserError(f"config.data.replay.workdir={options['workdir']!r}: no "
                    f"{path}; give the workdir of the run whose data is replayed")
  return options


def _replayed_data_config(workdir: str) -> Any:
  from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    return config_lib.from_json(f.read()).data


def _with_replay(data_config: Any, train: Any, *, num_classes: int | None,
                 vocab_size: int | None) -> Concatenation:
  """`train` followed by a seeded sample of the replayed run's training split,
  so many that `fraction` of the whole is replayed (at most all of it)."""
  options = replay_options(data_config)
  old = open_splits(_replayed_data_config(options["workdir"]),
                    state_dir=options["workdir"], write_state=False,
                    num_classes=num_classes, vocab_size=vocab_size)["train"]
  if getattr(old, "label_names", None) != getattr(train, "label_names", None):
    raise UserError(f"config.data.replay.workdir={options['workdir']!r}: its labels "
                    f"{getattr(old, 'label_names', None)} differ from this run's "
                    f"{getattr(train, 'label_names', None)}; the replayed run's "
                    "data_state.json must encode this run's data")
  fraction = options["fraction"]
  wanted = round(fraction / (1 - fraction) * len(train))
  if wanted > len(old):
    writers.info(f"config.data.replay: {wanted} old examples make fraction "
                 f"{fraction:g}, but {options['workdir']} trained on {len(old)}; "
                 "replaying them all")
  rng = np.random.default_rng(options["seed"])
  indices = np.sort(rng.choice(len(old), min(wanted, len(old)), replace=False))
  return Concatenation([train, Subset(old, indices)])


def _check_not_empty(data_config: Any, splits: dict[str, Any]) -> None:
  for name, source in splits.items():
    if len(source) == 0:
      spec = (f"config.data.splits.{name}={data_config.splits[name]!r}"
              if name in dict(data_config.get("splits") or {}) else
              f"config.data.split_fractions.{name}")
      raise UserError(f"{spec}: split {name!r} has no examples; check the files "
                      "it names (and how many records were skipped)")


def _load_or_fit(module, data_config: Any, train: Any, state_dir: str | None,
                 write_state: bool) -> dict[str, Any] | None:
  """The state saved in `state_dir` (else, with config.data.replay, the replayed
  run's, written to `state_dir`), else fitted on `train` (None: nothing to fit)."""
  path = os.path.join(state_dir, STATE_FILE) if state_dir else None
  read_from = path
  if data_config.get("replay") and not (path and os.path.exists(path)):
    replayed = os.path.join(replay_options(data_config)["workdir"], STATE_FILE)
    # Without one, the replayed run's source fitted nothing; neither will this.
    read_from = replayed if os.path.exists(replayed) else path
  if read_from and os.path.exists(read_from):
    try:
      with open(read_from) as f:
        saved = json.load(f)
      source, state = saved["source"], saved["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{read_from}: unreadable ({e}); delete it to fit the "
                      "vocabularies again from the training split") from None
    if source != data_config.source:
      raise UserError(f"{read_from}: was fitted for source {source!r}, but "
                      f"config.data.source={data_config.source!r}; use a new "
                      "workdir")
    if read_from != path and path and write_state:
      _write_state(path, data_config.source, state)
    return state
  if train is None:  # A saved state encodes any split; fitting needs the train one.
    raise UserError(f"config.data: source {data_config.source!r} fits its "
                    "vocabularies on a split named 'train'; name one 'train'")
  state = module.fit(data_config, train)
  if path and write_state and state is not None:
    _write_state(path, data_config.source, state)
  return state


def _write_state(path: str, source: str, state: dict[str, Any]) -> None:
  # Written whole, then renamed: other processes never read half a file.
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with writers.atomic_file(path) as f:
    json.dump({"source": source, "state": state}, f, indent=1)


def _encode(splits: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
  """Applies `state` to every split; subsets of one source share one encoding."""
  wholes, result = {}, {}
  for name, split in splits.items():
    if isinstance(split, Subset):
      if id(split.source) not in wholes:
        wholes[id(split.source)] = split.source.encode(state)
      result[name] = Subset(wholes[id(split.source)], split.indices)
    else:
      result[name] = split.encode(state)
  return result


def check_labels(data_config: Any, splits: dict[str, Any], *,
                 num_classes: int | None = None,
                 vocab_size: int | None = None) -> dict[str, Any]:
  """Checks class labels (and tokenizers) against the model, before training.

  A label that is negative (a class the training split never had) or not below
  `num_classes` is a bad record: an error naming its file and line, or, with
  `config.data.skip_bad_records`, dropped from its split. A tokenizer with more
  tokens than the model's `vocab_size` is an error.
  """
  checked = {}
  for name, split in splits.items():
    source_vocab = getattr(split, "vocab_size", None)
    if vocab_size and source_vocab and source_vocab > vocab_size:
      raise UserError(f"config.model.vocab_size={vocab_size}: split {name!r} is "
                      f"tokenised into {source_vocab} token ids; set "
                      f"config.model.vocab_size={source_vocab}")
    labels = getattr(split, "labels", None)
    if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
      checked[name] = split  # No labels, or real-valued targets.
      continue
    labels = np.asarray(labels)
    if labels.ndim == 2:  # Multi-label 0/1 vectors: -1 marks an unknown name.
      bad = labels.min(axis=1) < 0
      if num_classes and labels.shape[1] != num_classes:
        raise UserError(f"config.model.num_classes={num_classes}: split {name!r} "
                        f"has {labels.shape[1]} labels; set "
                        f"config.model.num_classes={labels.shape[1]}")
    else:
      bad = labels < 0
      if num_classes:
        bad |= labels >= num_classes
    if not bad.any():
      checked[name] = split
      continue
    names = getattr(split, "label_names", None)
    report = records.BadRecords(data_config, f"split {name!r}")
    for i in np.flatnonzero(bad):
      location = (split.location(i) if hasattr(split, "location") else
                  f"split {name!r}, example {i}")
      report(location, _label_problem(
          int(labels[i].min()), names, num_classes,
          needed=len(names) if names else int(labels.max()) + 1,
          label_vectors=labels.ndim == 2))
    report.report()
    checked[name] = Subset(split, np.flatnonzero(~bad))
  return checked


def _label_problem(label: int, names: list[str] | None, num_classes: int | None,
                   *, needed: int, label_vectors: bool = False) -> str:
  if label < 0 and names is not None and label_vectors:
    return ("a label name is not one of the training split's labels; fix it, or "
            "add examples of it to the training split")
  if label < 0 and names is not None:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return (f"label is not one of the {len(names)} classes of the training split "
            f"({shown}); fix it, or add examples of it to the training split")
  if label < 0:
    return ("label is not a class id: the training split's labels are integers "
            "0, 1, ...; fix it")
  what = f"label {names[label]!r} (class {label})" if names else f"label {label}"
  return (f"{what} is outside config.model.num_classes={num_classes}; set "
          f"config.model.num_classes={needed}, or fix the label")


def describe(data_config: Any, splits: dict[str, Any]) -> dict[str, Any]:
  """What WORKDIR/splits.json records: enough to rebuild and verify each split."""
  record = {"source": data_config.source}
  for key in ("splits", "split_fractions", "split_seed", "stratify",
              "cross_validation"):
    if data_config.get(key) is not None:
      value = data_config.get(key)
      record[key] = value.to_dict() if hasattr(value, "to_dict") else value
  record["sizes"] = {name: len(s) for name, s in splits.items()}
  record["index_sha256"] = {
      name: hashlib.sha256(s.indices.tobytes()).hexdigest()
      for name, s in splits.items() if isinstance(s, Subset)}
  train = splits.get("train")
  if isinstance(train, Concatenation):  # config.data.replay: what was mixed in.
    own, replayed = train.parts
    record["replay"] = {
        **replay_options(data_config), "own_examples": len(own),
        "replayed_examples": len(replayed),
        "replayed_index_sha256": hashlib.sha256(replayed.indices.tobytes()).hexdigest()}
    if isinstance(own, Subset):
      record["index_sha256"]["train"] = hashlib.sha256(own.indices.tobytes()).hexdigest()
  return record
