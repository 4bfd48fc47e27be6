"""Hugging Face checkpoints in and out: config.json + safetensors <-> ctjax params.

  config.model_init = "path/to/hf_dir"        # config.json + model.safetensors
  config.model_init_skip = ("^classifier/",)  # the new head, initialised fresh
  config.data.tokenizer = "path/to/hf_dir"    # its tokenizer.json

Each architecture is one module here (`bert`, `gpt2`, `vit`) holding a table: which
Hugging Face tensor becomes which ctjax parameter, and how its layout changes
(`Layout`), plus which config.json key gives which `config.model` field. This module
holds what they share: reading the files, checking every name and shape before
anything is placed, placing each tensor straight into its sharding, and writing
the same files back (`export`).

Only safetensors are read: a pickle (`pytorch_model.bin`) can run code when loaded.
"""
import dataclasses
import glob
import importlib
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from ctjax import writers
from ctjax.errors import UserError

# Hugging Face `model_type` -> module of this package.
ARCHITECTURES = {"bert": "bert", "gpt2": "gpt2", "vit": "vit"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# How many names an error line lists of each kind before "... and N more".
_LISTED = 8


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a Hugging Face tensor becomes a ctjax parameter, and back.

  To ctjax: permute the axes (PyTorch's Linear keeps [out, in], a conv [out, in,
  kh, kw]; flax keeps [in, out] and [kh, kw, in, out]), then split the first or
  last axis into [heads, head_dim] where ctjax's attention keeps heads apart.

  Attributes:
    permutation: `np.transpose` axes applied to the Hugging Face tensor; None
      keeps them.
    split_heads: "first" or "last": the axis of the (permuted) tensor that is
      [heads * head_dim] in Hugging Face and [heads, head_dim] in ctjax.
  """
  permutation: tuple[int, ...] | None = None
  split_heads: str | None = None

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face shape of a ctjax parameter of `shape`."""
    shape = tuple(shape)
    if self.split_heads == "last":
      shape = shape[:-2] + (shape[-2] * shape[-1],)
    elif self.split_heads == "first":
      shape = (shape[0] * shape[1],) + shape[2:]
    if self.permutation:
      shape = tuple(shape[i] for i in np.argsort(self.permutation))
    return shape

  def fits(self, hf_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a Hugging Face tensor of `hf_shape` can fill a parameter of `shape`."""
    return tuple(hf_shape) == self.hf_shape(shape)

  def to_ctjax(self, x: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`x` (Hugging Face layout) as a ctjax parameter of `shape`; `name` is the
    ctjax path, for what is logged."""
    del name  # Only layouts that adapt the values report what they did.
    if self.permutation:
      x = np.transpose(x, self.permutation)
    return x.reshape(shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    """The inverse of `to_ctjax`."""
    if self.split_heads == "last":
      x = x.reshape(x.shape[:-2] + (-1,))
    elif self.split_heads == "first":
      x = x.reshape((-1,) + x.shape[2:])
    if self.permutation:
      x = np.transpose(x, np.argsort(self.permutation))
    return x


COPY = Layout()
# torch.nn.Linear weight [out, in] -> Dense kernel [in, out].
LINEAR = Layout((1, 0))
# Linear [heads * head_dim, embed] -> query/key/value kernel [embed, heads, head_dim].
LINEAR_TO_HEADS = Layout((1, 0), "last")
# Linear [embed, heads * head_dim] -> attention output kernel [heads, head_dim, embed].
LINEAR_FROM_HEADS = Layout((1, 0), "first")
# [..., heads * head_dim] -> [..., heads, head_dim]: query/key/value biases, and
# GPT-2's Conv1D weights, which are already [in, out].
HEADS_LAST = Layout(None, "last")
HEADS_FIRST = Layout(None, "first")
# Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out].
CONV = Layout((2, 3, 1, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
  """One Hugging Face tensor and the ctjax parameter(s) it fills.

  Attributes:
    hf: the tensor's name inside the base model (`BertModel`, `GPT2Model`,
      `ViTModel`); "{i}" stands for the layer index.
    ctjax: parameter path(s), "/"-separated; several when Hugging Face fuses them
      (GPT-2's c_attn holds query, key and value side by side on its last axis).
    layout: how each part's layout changes.
    head: the name is the task model's own (`classifier.weight`), never under the
      base model's prefix.
  """
  hf: str
  ctjax: str | tuple[str, ...]
  layout: Layout = COPY
  head: bool = False

  @property
  def targets(self) -> tuple[str, ...]:
    return (self.ctjax,) if isinstance(self.ctjax, str) else self.ctjax

  def for_layer(self, i: int) -> "Rule":
    return dataclasses.replace(
        self, hf=self.hf.format(i=i),
        ctjax=tuple(t.format(i=i) for t in self.targets))


def per_layer(rules: Iterable[Rule], num_layers: int) -> list[Rule]:
  """The rules of one layer ("{i}" in their names), for every layer."""
  return [rule.for_layer(i) for i in range(num_layers) for rule in rules]


@dataclasses.dataclass(frozen=True)
class Field:
  """A `config.model` field read from (and written to) config.json.

  Attributes:
    model: the ctjax `config.model` field.
    hf: the config.json key.
    default: the value when config.json lacks the key (transformers' default),
      or a function of config.json giving it.
  """
  model: str
  hf: str
  default: Any = None


# ----------------------------------------------------------------------------- #
# Reading a Hugging Face directory.
# ----------------------------------------------------------------------------- #


def is_hf_dir(path: str) -> bool:
  """Whether `path` is a Hugging Face model directory: a config.json beside model
  weights (a ctjax workdir has a config.json too, beside checkpoints/)."""
  weights = (SINGLE_FILE, INDEX_FILE, "pytorch_model.bin", "pytorch_model.bin.index.json")
  return (bool(path) and os.path.isfile(os.path.join(path, "config.json"))
          and any(os.path.isfile(os.path.join(path, w)) for w in weights))


def read_config(hf_dir: str) -> dict[str, Any]:
  path = os.path.join(hf_dir, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot be read as JSON ({e}); give a Hugging Face "
                    "model directory") from None


class Checkpoint:
  """The tensors of a Hugging Face directory, read one at a time from safetensors.

  Attributes:
    shapes: {name: shape} of every tensor, read from the headers only.
  """

  def __init__(self, hf_dir: str):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    files = _safetensors_files(hf_dir)
    self._handles = [safe_open(f, framework="numpy") for f in files]
    self._where = {}
    self.shapes = {}
    for handle in self._handles:
      for name in handle.keys():
        self._where[name] = handle
        self.shapes[name] = tuple(handle.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    return self._where[name].get_tensor(name)


def _safetensors_files(hf_dir: str) -> list[str]:
  single = os.path.join(hf_dir, SINGLE_FILE)
  index = os.path.join(hf_dir, INDEX_FILE)
  if os.path.isfile(single):
    return [single]
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(hf_dir, s))]
    if missing:
      raise UserError(f"{index} names shards that are not there: "
                      f"{', '.join(missing)}; download them too")
    return [os.path.join(hf_dir, s) for s in shards]
  pickles = sorted(os.path.basename(p) for p in glob.glob(
      os.path.join(hf_dir, "*.bin")) + glob.glob(os.path.join(hf_dir, "*.pt*")))
  found = f"it has only {', '.join(pickles)}, which are" if pickles else "nor"
  raise UserError(
      f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}; {found} pickles that can run code "
      "when loaded, so ctjax does not read them; convert it where you trust it: "
      "load it with transformers (AutoModel.from_pretrained(dir)) and save it with "
      "model.save_pretrained(dir, safe_serialization=True)")


def architecture(hf_config: dict[str, Any], where: str) -> Any:
  """The module of this package for config.json's `model_type`."""
  model_type = hf_config.get("model_type")
  if model_type not in ARCHITECTURES:
    raise UserError(f"{where}/config.json: model_type={model_type!r} is not one ctjax "
                    f"imports; supported: {', '.join(ARCHITECTURES)}")
  return importlib.import_module(f"{__name__}.{ARCHITECTURES[model_type]}")


def model_fields(arch: Any, hf_config: dict[str, Any]) -> dict[str, Any]:
  """`config.model` fields (and `name`) that config.json determines."""
  fields = {"name": arch.MODEL_NAME, **arch.FIXED}
  for field in arch.FIELDS:
    value = hf_config.get(field.hf)
    if value is None:
      value = field.default(hf_config) if callable(field.default) else field.default
    fields[field.model] = value
  arch.check_supported(hf_config, fields)
  return fields


# ----------------------------------------------------------------------------- #
# config.model from config.json.
# ----------------------------------------------------------------------------- #


def resolve_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `config.model` filled from `config.model_init`'s config.json.

  When config.model_init is a Hugging Face directory, its config.json gives the
  architecture (`model.name` from its model_type, sizes, epsilon, activation,
  vocabulary, ...). Fields the experiment sets too must agree; `num_classes`,
  dropout and dtypes stay the experiment's. Other configs come back unchanged.

  Raises:
    UserError: one line naming every field that disagrees.
  """
  if not is_hf_dir(config.get("model_init", "")):
    return config
  hf_dir = config.model_init
  hf_config = read_config(hf_dir)
  _safetensors_files(hf_dir)  # A directory of pickles is refused here, early.
  arch = architecture(hf_config, hf_dir)
  fields = model_fields(arch, hf_config)
  hf_keys = {f.model: f.hf for f in arch.FIELDS}
  # A name left at the base config's default was not chosen by the experiment.
  from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
  default_name = config_lib.base_config().model.name
  given = dict(config.model)
  if given.get("name") == default_name:
    del given["name"]
  disagree = [
      f"config.model.{key}={given[key]!r} disagrees with {hf_dir}/config.json "
      + (f"{hf_keys[key]}={value!r}" if key in hf_keys
         else f"(model_type {hf_config['model_type']}: {key}={value!r})")
      for key, value in fields.items()
      if key in given and _comparable(given[key]) != _comparable(value)]
  if disagree:
    raise UserError("; ".join(disagree) + "; remove it from the config or use a "
                    "matching checkpoint")
  arch.rules({**given, **fields})  # Refuses a layout it cannot map (scan_layers).
  resolved = ml_collections.ConfigDict(config.to_dict())
  with resolved.unlocked():
    for key, value in fields.items():
      resolved.model[key] = value
  return resolved


def _comparable(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- #
# Import.
# ----------------------------------------------------------------------------- #


def flatten(tree: Any) -> dict[str, Any]:
  """{"a/b/c": leaf} of a nested dict of parameters."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _listed(names: list[str]) -> str:
  shown = ", ".join(names[:_LISTED])
  return shown + (f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED
                  else "")


@dataclasses.dataclass
class _Plan:
  """Which tensor fills which parameters, after every check passed.

  Attributes:
    prefix: of the base model's names in this file ("bert." or "").
    rules: those whose tensor is read: in the file, not all targets skipped.
    ignored: names of the file's tensors that are known and not used.
  """
  prefix: str
  rules: list[Rule]
  ignored: list[str]


def _plan(arch: Any, hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
          targets: dict[str, Any], skip: tuple[str, ...], where: str) -> _Plan:
  """Matches the checkpoint's tensors with the model's parameters, or raises one
  UserError listing every missing, unexpected and misshapen tensor together."""
  rules = arch.rules(model_fields(arch, hf_config))
  prefix = arch.PREFIX if any(n.startswith(arch.PREFIX) for n in shapes) else ""
  full_name = lambda rule: rule.hf if rule.head else prefix + rule.hf

  missing, absent, misshapen = [], [], []
  used, to_read = set(), []
  for rule in rules:
    name = full_name(rule)
    if all(_matches(t, skip) for t in rule.targets):
      used.add(name)  # Deliberately not loaded: its head is replaced.
      continue
    if name not in shapes:
      # A task head the file lacks (a BertModel has no classifier) is a parameter
      # left unloaded: `check_all_loaded` says to name it in model_init_skip.
      if not rule.head:
        missing.append(name)
      continue
    used.add(name)
    to_read.append(rule)
    for target in rule.targets:
      if target not in targets:
        absent.append(target)
    if any(t not in targets for t in rule.targets):
      continue
    if len(rule.targets) == 1:
      fits = rule.layout.fits(shapes[name], targets[rule.targets[0]].shape)
    else:  # Fused on the last axis.
      parts = [rule.layout.hf_shape(targets[t].shape) for t in rule.targets]
      fits = shapes[name] == parts[0][:-1] + (sum(p[-1] for p in parts),)
    if not fits:
      needs = " + ".join(str(list(targets[t].shape)) for t in rule.targets)
      misshapen.append(f"{name} {list(shapes[name])} -> "
                       f"{'+'.join(rule.targets)} {needs}")
  ignored = [n for n in shapes if n not in used
             and any(re.search(p, n) for p, _ in arch.IGNORED)]
  unexpected = sorted(set(shapes) - used - set(ignored))

  problems = []
  if missing:
    problems.append(f"missing from the checkpoint: {_listed(missing)}")
  if unexpected:
    problems.append(f"unexpected in the checkpoint: {_listed(unexpected)}")
  if misshapen:
    problems.append(f"shapes that differ (checkpoint -> model): {_listed(misshapen)}")
  if absent:
    problems.append(f"not parameters of the model: {_listed(absent)}")
  if problems:
    raise UserError(
        f"config.model_init={where}: does not fit config.model "
        f"({arch.MODEL_NAME}): {'; '.join(problems)}; use a checkpoint of this "
        "architecture, or name replaced parameters in config.model_init_skip")
  return _Plan(prefix, to_read, ignored)


def check_all_loaded(targets: Iterable[str], loaded: set[str],
                     skip: tuple[str, ...], where: str) -> list[str]:
  """The parameters matched by `skip`; raises if any other one is not `loaded`.

  Every parameter must be either loaded or deliberately initialised afresh, so a
  typo in a name cannot leave part of a model silently random.
  """
  fresh, unloaded = [], []
  for path in targets:
    if _matches(path, skip):
      fresh.append(path)
    elif path not in loaded:
      unloaded.append(path)
  if unloaded:
    raise UserError(
        f"config.model_init={where}: has no values for {_listed(unloaded)}; a new "
        "part of the model (such as a classifier head for other classes) must be "
        "named in config.model_init_skip to be initialised afresh, e.g. "
        "config.model_init_skip=('^classifier/',)")
  return fresh


def _matches(path: str, skip: tuple[str, ...]) -> bool:
  return any(re.search(pattern, path) for pattern in skip)


def _sharding_of(abstract: Any, init: Any) -> jax.sharding.Sharding:
  return getattr(abstract, "sharding", None) or init.sharding


def load_params(hf_dir: str, abstract_params: Any, init_params: Any,
                skip: tuple[str, ...] = ()) -> Any:
  """Params from the Hugging Face directory `hf_dir`; `skip` regexes keep `init_params`.

  Every tensor of the checkpoint must be used (or be a known buffer or unused
  head, see each architecture's IGNORED), every parameter of the model loaded or
  matched by `skip`, and every shape must fit: otherwise one UserError lists all
  that is wrong, before anything is read. Each tensor is then read, converted and
  placed into its parameter's sharding on its own, so no host ever holds more
  than one tensor of the model at a time.

  Args:
    hf_dir: a directory with config.json and model.safetensors (or shards and
      model.safetensors.index.json).
    abstract_params: jax.ShapeDtypeStruct leaves, with the shardings to place into.
    init_params: the freshly initialised params, kept for `skip`ped paths.
    skip: regexes over parameter paths ("classifier/kernel") to keep fresh.

  Returns:
    A tree like `init_params`.
  """
  hf_config = read_config(hf_dir)
  arch = architecture(hf_config, hf_dir)
  checkpoint = Checkpoint(hf_dir)
  abstract, init = flatten(abstract_params), flatten(init_params)
  plan = _plan(arch, hf_config, checkpoint.shapes, abstract, skip, hf_dir)
  fresh = check_all_loaded(
      abstract, {t for rule in plan.rules for t in rule.targets
                 if not _matches(t, skip)}, skip, hf_dir)

  loaded = {}
  for rule in plan.rules:
    wanted = [t for t in rule.targets if not _matches(t, skip)]
    tensor = checkpoint.read(rule.hf if rule.head else plan.prefix + rule.hf)
    parts = (np.split(tensor, len(rule.targets), axis=-1) if len(rule.targets) > 1
             else [tensor])
    for target, part in zip(rule.targets, parts):
      if target not in wanted:
        continue
      leaf = abstract[target]
      value = rule.layout.to_ctjax(part, leaf.shape, target).astype(leaf.dtype)
      loaded[target] = jax.make_array_from_callback(
          leaf.shape, _sharding_of(leaf, init[target]),
          lambda index, value=value: value[index])
    del tensor, parts

  writers.info(f"config.model_init={hf_dir}: loaded {len(loaded)} parameters from "
               f"{len(plan.rules)} tensors; initialised "
               f"afresh: {', '.join(fresh) or 'none'}"
               + (f"; not used: {_listed(plan.ignored)}" if plan.ignored else ""))
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(init_params),
      [loaded.get(path, leaf) for path, leaf in init.items()])


# ----------------------------------------------------------------------------- #
# Export.
# ----------------------------------------------------------------------------- #


def to_hf_tensors(params: Any, model_config: dict[str, Any]) -> dict[str, np.ndarray]:
  """{Hugging Face name: tensor} of ctjax `params`, as the task model names them
  (`bert.`, `transformer.`, `vit.` prefixes; `classifier`, tied `lm_head` absent).

  Also maps gradients, which have the params' structure.
  """
  model_config = _with_defaults(model_config)
  arch = _architecture_of_model(model_config["name"])
  differ = [f"config.model.{key}={model_config[key]!r}" for key, value in
            arch.FIXED.items() if model_config[key] != value]
  if differ:
    raise UserError(f"{', '.join(differ)}: Hugging Face's {arch.HF_CLASS} has "
                    f"{', '.join(f'{k}={v!r}' for k, v in arch.FIXED.items())}; "
                    "only such models export to it")
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  tensors = {}
  for rule in arch.rules(model_config):
    parts = [rule.layout.to_hf(flat.pop(t)) for t in rule.targets]
    name = rule.hf if rule.head else arch.PREFIX + rule.hf
    tensors[name] = np.ascontiguousarray(
        parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))
  if flat:
    raise UserError(f"{_listed(sorted(flat))}: parameters that Hugging Face's "
                    f"{arch.HF_CLASS} has no place for")
  return tensors


def _with_defaults(model_config: Any) -> dict[str, Any]:
  """Every field of `config.model`'s Model, defaults included: a run's config
  holds only those its experiment set."""
  from ctjax import models  # pylint: disable=g-import-not-at-top
  if hasattr(model_config, "to_dict"):
    model_config = model_config.to_dict()
  model = models.get_model(model_config)
  return {"name": model_config["name"],
          **{f.name: getattr(model, f.name) for f in dataclasses.fields(model)
             if f.name not in ("parent", "name")}}


def _architecture_of_model(name: str) -> Any:
  for module in ARCHITECTURES.values():
    arch = importlib.import_module(f"{__name__}.{module}")
    if arch.MODEL_NAME == name:
      return arch
  raise UserError(f"config.model.name={name!r}: ctjax exports only "
                  f"{', '.join(ARCHITECTURES)} models to Hugging Face")


def export(params: Any, model_config: Any, out_dir: str, *,
           tokenizer: str | None = None) -> None:
  """Writes `params` as a Hugging Face directory that transformers loads.

  config.json, model.safetensors (float32 as the params are) and, given a
  `tokenizer` (a tokenizer.json, or a directory holding one), tokenizer.json. The
  class is BertForSequenceClassification, GPT2LMHeadModel or
  ViTForImageClassification.

  Args:
    params: the full model's parameters, as `config.model`'s Model has them. A
      run whose checkpoint holds something else (adapters, frozen parts) maps its
      checkpoint to these first.
    model_config: `config.model` of the run.
    out_dir: created if missing; its files of these names are replaced.
    tokenizer: copied alongside when given.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model_config = _with_defaults(model_config)
  tensors = to_hf_tensors(jax.device_get(params), model_config)
  arch = _architecture_of_model(model_config["name"])
  hf_config = {f.hf: model_config[f.model] for f in arch.FIELDS}
  hf_config.update(arch.hf_config(model_config, tensors))
  if "num_classes" in model_config:
    labels = {str(i): f"LABEL_{i}" for i in range(model_config["num_classes"])}
    hf_config.update(id2label=labels, label2id={v: int(k) for k, v in labels.items()})
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, SINGLE_FILE), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  if tokenizer:
    source = (os.path.join(tokenizer, "tokenizer.json") if os.path.isdir(tokenizer)
              else tokenizer)
    with open(source, "rb") as f_in, open(
        os.path.join(out_dir, "tokenizer.json"), "wb") as f_out:
      f_out.write(f_in.read())
