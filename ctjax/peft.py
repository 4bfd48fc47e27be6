"""Transfer controls: which parameters train, how fast, and LoRA adapters.

  config.optim.groups = (("^embeddings/", "frozen"),            # first match wins
                         ("/layer_0/", dict(lr_mult=0.1)),
                         ("classifier/", dict(lr_mult=10.0, wd_mult=0.0)))
  config.optim.layer_decay = 0.8   # layer i of L: lr * 0.8**(L - i); 0 is off
  config.lora = dict(rank=8, alpha=16.0, targets=("attention/(query|value)/kernel$",),
                     trainable=("^classifier/",))

Patterns are regexes searched in a parameter's path, "encoder/layer_3/attention/
query/kernel". The train state then holds two trees of the model's parameters:

  params  what training changes: trainable parameters and LoRA adapters, with a
          gradient, optimizer state, and a place in every checkpoint;
  frozen  parameters training never changes: not differentiated, no optimizer
          state, not saved (on resume they come again from their source: the
          seeded initialisation, then config.model_init).

`Plan.model_params(params, frozen)` joins them into the tree `model.apply` takes,
adding each LoRA pair into its kernel, inside the compiled step: the model code
never knows. An adapter sits next to its kernel, "…/query/kernel_lora_a" [in, r]
and "…/query/kernel_lora_b" [r, out], for the kernel seen as a matrix [in, out]:
a [embed, heads, kv] attention kernel as [embed, heads*kv], [heads, kv, embed] as
[heads*kv, embed], a conv kernel [h, w, c_in, c_out] as [h*w*c_in, c_out]; a
leading `layers` axis (scanned layers) stays a batch axis of both. The effective
kernel is W + (alpha / rank) A B; B starts at zero, so step 0 is the base model.

Every mistake (a pattern that matches nothing, a bad option) is a UserError naming
the key, raised by `make_plan`, before anything compiles.
"""
import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ctjax.errors import UserError

Params = Any
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
# The paths of adapters, which no pretrained checkpoint (config.model_init) holds.
ADAPTER_PATTERN = r"_lora_[ab]$"
GROUP_OPTIONS = ("lr_mult", "wd_mult")
_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:/|$)")


def _flat(tree: Params) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def _nested(flat: dict[str, Any]) -> Params:
  return traverse_util.unflatten_dict(flat, sep="/")


def join(params: Params, frozen: Params) -> Params:
  """One tree of the leaves of two trees with disjoint paths."""
  return _nested({**_flat(params), **_flat(frozen)})


@dataclasses.dataclass(frozen=True)
class _Adapter:
  """A LoRA pair's layout for one kernel: its `batch` leading axes kept, the rest
  seen as a [rows, cols] matrix."""
  batch: int
  rows: int
  cols: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What trains and how, for one model; built by `make_plan`.

  Attributes:
    frozen: paths of the model's parameters that never change.
    adapters: kernel path -> its LoRA pair's layout.
    rank: the LoRA rank (0: no adapters).
    scale: alpha / rank, the factor of each adapter's product.
    multipliers: path of every trained leaf (adapters included) -> (lr_mult,
      wd_mult), the group's and the layer decay's, multiplied.
    summary: what `describe` prints, lines built while matching the patterns.
  """
  frozen: frozenset[str]
  adapters: dict[str, _Adapter]
  rank: int
  scale: float
  multipliers: dict[str, tuple[float, float]]
  summary: tuple[str, ...]

  def split(self, params: Params, rng: jax.Array) -> tuple[Params, Params]:
    """The model's params -> (params to train, adapters included; frozen).

    Works on boxed (logically partitioned) and abstract trees too: adapters are
    plain arrays, so the trainer replicates them over the mesh. They are small
    (rank * (rows + cols) per kernel), and replicated adapters keep their product
    free of collectives.
    """
    flat = _flat(params)
    for i, (path, adapter) in enumerate(sorted(self.adapters.items())):
      kernel = nn.meta.unbox(flat[path])
      lead = kernel.shape[:adapter.batch]
      # Kaiming-like A (unit-variance products), zero B: W + s*A*B starts at W.
      a = jax.random.normal(jax.random.fold_in(rng, i),
                            (*lead, adapter.rows, self.rank), kernel.dtype)
      flat[path + "_lora_a"] = a / math.sqrt(adapter.rows)
      flat[path + "_lora_b"] = jnp.zeros((*lead, self.rank, adapter.cols),
                                         kernel.dtype)
    return (_nested({p: x for p, x in flat.items() if p not in self.frozen}),
            _nested({p: x for p, x in flat.items() if p in self.frozen}))

  def model_params(self, params: Params, frozen: Params) -> Params:
    """The tree model.apply takes: `params` and `frozen` joined, adapters added in."""
    return _add_adapters(params, frozen, self.scale)

  def labels_and_multipliers(self) -> tuple[Any, dict[str, tuple[float, float]]]:
    """(params -> tree of labels, label -> (lr_mult, wd_mult)), for the optimizer.

    Labels name the distinct multiplier pairs ("group_0", ... in sorted order), so
    the optimizer state's structure follows from the config alone.
    """
    pairs = sorted(set(self.multipliers.values()))
    label = {pair: f"group_{i}" for i, pair in enumerate(pairs)}

    def labels(params: Params) -> Params:
      return _nested({p: label[self.multipliers[p]] for p in _flat(params)})

    return labels, {label[pair]: pair for pair in pairs}

  def describe(self) -> str:
    return "\n".join(self.summary)


def _options(index: int, options: Any) -> tuple[float, float] | None:
  """One group's options: None for "frozen", else (lr_mult, wd_mult)."""
  key = f"optim.groups[{index}]"
  if options == "frozen":
    return None
  if not hasattr(options, "items"):  # A dict or a ConfigDict.
    raise UserError(f"config.{key}={options!r}: give \"frozen\" or a dict of "
                    f"{' and/or '.join(GROUP_OPTIONS)}")
  options = dict(options.items())
  if "frozen" in options:
    others = " and ".join(sorted(set(options) - {"frozen"})) or "options"
    raise UserError(f"config.{key}={options!r}: frozen and {others} both: a "
                    "frozen parameter has no learning rate or decay; give either "
                    "\"frozen\" or a dict of lr_mult/wd_mult")
  unknown = sorted(set(options) - set(GROUP_OPTIONS))
  if unknown or not options:
    raise UserError(f"config.{key}={options!r}: options are "
                    f"{' and/or '.join(GROUP_OPTIONS)} (or the string \"frozen\")")
  for name, value in options.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise UserError(f"config.{key}.{name}={value!r}: must be a number >= 0")
  return (float(options.get("lr_mult", 1.0)), float(options.get("wd_mult", 1.0)))


def _compile(key: str, pattern: Any) -> re.Pattern:
  if not isinstance(pattern, str):
    raise UserError(f"config.{key}={pattern!r}: expected a regex string")
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f"config.{key}={pattern!r}: not a valid regex ({e})") from None


def _layer_factors(decay: float, paths: list[str]) -> dict[str, float]:
  """lr factor per path: layer_i of L gets decay**(L - i), embeddings (outside the
  layers, "embed" in the path) decay**(L + 1), the rest (norms, head) 1."""
  layers = [int(m[1]) for p in paths if (m := _LAYER.search(p))]
  if not layers:
    raise UserError(f"config.optim.layer_decay={decay!r}: the model has no "
                    "layer_{i} parameters to decay (scanned layers stack them in "
                    "one array: set config.model.scan_layers=False)")
  num_layers = max(layers) + 1

  def factor(path: str) -> float:
    if m := _LAYER.search(path):
      return decay ** (num_layers - int(m[1]))
    return decay ** (num_layers + 1) if "embed" in path.lower() else 1.0

  return {p: factor(p) for p in paths}


def _adapter_layout(path: str, shape: tuple[int, ...],
                    names: tuple[str | None, ...] | None) -> _Adapter:
  """How a kernel is seen as a matrix: see the module docstring."""
  names = tuple(names or ()) + (None,) * (len(shape) - len(names or ()))
  batch = 0
  while batch < len(shape) and names[batch] == "layers":
    batch += 1
  core = len(shape) - batch
  if core < 2:
    raise UserError(f"config.lora.targets: {path} has shape {shape}, not a matrix; "
                    "target kernels only (…/kernel$)")
  # Attention projections read the embedding whole: [embed, heads, kv]. Others
  # (dense, conv, the attention output [heads, kv, embed]) write their last axis.
  split = 1 if core > 2 and names[batch] == "embed" else core - 1
  return _Adapter(batch=batch,
                  rows=int(np.prod(shape[batch:batch + split])),
                  cols=int(np.prod(shape[batch + split:])))


def _count(flat: dict[str, Any], paths) -> str:
  n = sum(int(np.prod(flat[p].shape)) for p in paths)
  return f"{len(paths)} tensors, {n:,} values"


def make_plan(config: Any, abstract_params: Params) -> Plan:
  """The plan for `config` (optim.groups, optim.layer_decay, lora) and a model.

  Args:
    config: the run's config.
    abstract_params: the model's params from jax.eval_shape of its init, boxed
      (logical axis names tell how a LoRA target kernel is a matrix) or not.

  Returns:
    The plan; raises a one-line UserError naming the key for any mistake.
  """
  names = _flat(nn.get_partition_spec(abstract_params))
  flat = _flat(nn.meta.unbox(abstract_params))
  paths = list(flat)
  lora = config.get("lora", None) or {"rank": 0}
  rank = lora.get("rank", 0)
  if not isinstance(rank, int) or rank < 0:
    raise UserError(f"config.lora.rank={rank!r}: must be an int >= 0 (0 is off)")
  summary = []

  adapters, lora_trainable = (_lora_targets(lora, rank, flat, names) if rank
                               else ({}, set()))
  all_paths = paths + [p + s for p in sorted(adapters) for s in ADAPTER_SUFFIXES]
  shapes = {**flat, **_adapter_shapes(flat, adapters, rank)}
  if rank:
    summary.append(
        f"  LoRA rank {rank}, alpha {lora['alpha']:g}: {len(adapters)} kernels "
        f"adapted (matching {', '.join(map(repr, lora['targets']))}), adapters "
        f"{_count(shapes, all_paths[len(paths):])}; the base is frozen except "
        f"{_count(shapes, sorted(lora_trainable))} matching lora.trainable "
        f"{tuple(lora['trainable'])!r}")

  group_of = _match_groups(config.optim.get("groups", ()) or (), all_paths, shapes,
                           summary)

  # A frozen group freezes; with LoRA, so does every base parameter that
  # lora.trainable leaves out. Groups scale what trains; LoRA decides what trains.
  frozen = {p for p in all_paths if (p in group_of and group_of[p] is None) or
            (rank and p in flat and p not in lora_trainable)}
  trained = [p for p in all_paths if p not in frozen]
  if not trained:
    raise UserError("config.optim.groups: every parameter is frozen; nothing would "
                    "train")

  decay = config.optim.get("layer_decay", 0.0) or 0.0
  if not 0 <= decay <= 1:
    raise UserError(f"config.optim.layer_decay={decay!r}: must be in [0, 1]; 0 is off")
  # An adapter's layer is its kernel's.
  layer_factor = (_layer_factors(decay, all_paths) if decay else
                  dict.fromkeys(all_paths, 1.0))
  multipliers = {}
  for p in trained:
    lr_mult, wd_mult = group_of.get(p) or (1.0, 1.0)
    multipliers[p] = (lr_mult * layer_factor[p], wd_mult)
  if decay:
    factors = sorted({layer_factor[p] for p in trained})
    summary.append(f"  layer decay {decay}: lr factors from {factors[0]:.4g} to "
                   f"{factors[-1]:.4g} over {len(factors)} depths")

  summary.insert(0, f"transfer: {_count(shapes, trained)} train, "
                    f"{_count(shapes, sorted(frozen))} frozen")
  return Plan(frozen=frozenset(frozen), adapters=adapters, rank=rank,
              scale=float(lora["alpha"]) / rank if rank else 0.0,
              multipliers=multipliers, summary=tuple(summary))


def _lora_targets(lora: Any, rank: int, flat: dict[str, Any],
                  names: dict[str, Any]) -> tuple[dict[str, _Adapter], set[str]]:
  """(kernel path -> adapter layout, paths of other parameters that still train)."""
  if not lora.get("alpha", 0) > 0:
    raise UserError(f"config.lora.alpha={lora.get('alpha')!r}: must be > 0")
  adapters, trainable = {}, set()
  for i, pattern in enumerate(lora.get("targets", ()) or ()):
    regex = _compile(f"lora.targets[{i}]", pattern)
    hits = [p for p in flat if regex.search(p) and p.endswith("kernel")]
    if not hits:
      raise UserError(f"config.lora.targets[{i}]={pattern!r}: matches no kernel "
                      f"of this model (kernels: {_examples(list(flat), 'kernel')})")
    for p in hits:
      adapters[p] = _adapter_layout(p, flat[p].shape, tuple(names[p] or ()))
  if not adapters:
    raise UserError(f"config.lora.rank={rank}: LoRA needs config.lora.targets, "
                    "e.g. ('attention/(query|value)/kernel$',)")
  for i, pattern in enumerate(lora.get("trainable", ()) or ()):
    regex = _compile(f"lora.trainable[{i}]", pattern)
    hits = {p for p in flat if regex.search(p)}
    if not hits:
      raise UserError(f"config.lora.trainable[{i}]={pattern!r}: matches no "
                      f"parameter (e.g. {_examples(list(flat))})")
    trainable |= hits
  return adapters, trainable


def _match_groups(groups: Any, paths: list[str], shapes: dict[str, Any],
                  summary: list[str]) -> dict[str, tuple[float, float] | None]:
  """Path -> its group's options (None: frozen), the first match winning; a
  pattern that matches nothing is a mistake. Appends a line per group to
  `summary`."""
  group_of = {}
  for i, group in enumerate(groups):
    if not isinstance(group, (tuple, list)) or len(group) != 2:
      raise UserError(f"config.optim.groups[{i}]={group!r}: expected a pair "
                      "(regex, \"frozen\" or dict(lr_mult=..., wd_mult=...))")
    regex, options = _compile(f"optim.groups[{i}]", group[0]), _options(i, group[1])
    hits = [p for p in paths if regex.search(p)]
    if not hits:
      raise UserError(f"config.optim.groups[{i}]={group[0]!r}: matches no "
                      f"parameter (e.g. {_examples(paths)})")
    new = [p for p in hits if p not in group_of]
    group_of.update({p: options for p in new})
    what = ("frozen" if options is None else
            f"lr x{options[0]:g}, weight decay x{options[1]:g}")
    earlier = (f" ({len(hits) - len(new)} more matched earlier groups)"
               if len(new) < len(hits) else "")
    summary.append(f"  optim.groups[{i}] {group[0]!r}: {what}: "
                   f"{_count(shapes, new)}{earlier}")
  return group_of


def _adapter_shapes(flat: dict[str, Any], adapters: dict[str, _Adapter],
                    rank: int) -> dict[str, jax.ShapeDtypeStruct]:
  shapes = {}
  for p, a in adapters.items():
    lead = flat[p].shape[:a.batch]
    dtype = flat[p].dtype
    shapes[p + "_lora_a"] = jax.ShapeDtypeStruct((*lead, a.rows, rank), dtype)
    shapes[p + "_lora_b"] = jax.ShapeDtypeStruct((*lead, rank, a.cols), dtype)
  return shapes


def _examples(paths: list[str], suffix: str = "") -> str:
  chosen = [p for p in paths if p.endswith(suffix)]
  return ", ".join(chosen[:4]) + (", …" if len(chosen) > 4 else "")


def _add_adapters(params: Params, frozen: Params, scale: float) -> Params:
  """`params` and `frozen` joined, each kernel's LoRA pair (found by name) added
  into it as W + scale * A B; A B is reshaped to the kernel's shape whatever its
  layout, since A's rows and B's columns are the kernel's flattened axes."""
  flat = {**_flat(params), **_flat(frozen)}
  for path in [p[:-len("_lora_a")] for p in flat if p.endswith("_lora_a")]:
    a, b = flat.pop(path + "_lora_a"), flat.pop(path + "_lora_b")
    kernel = flat[path]
    delta = jnp.einsum("...ir,...ro->...io", a, b).reshape(kernel.shape)
    flat[path] = (kernel + scale * delta).astype(kernel.dtype)
  return _nested(flat)


def merge(params: Params, frozen: Params, config: Any) -> Params:
  """The model's full parameters with each LoRA pair merged into its kernel, for
  export: a plain checkpoint that computes what the adapted model computes."""
  rank = config.lora.rank
  return _add_adapters(params, frozen, config.lora.alpha / rank if rank else 0.0)


def tree_bytes(tree: Any) -> int:
  """Bytes of the arrays (or abstract arrays) of a tree."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def describe_optimizer_memory(opt_state: Any, full_opt_state: Any) -> str:
  """The optimizer state's bytes, and what freezing saves against training all.

  Args:
    opt_state: the run's optimizer state (arrays or abstract).
    full_opt_state: the state the same optimizer would hold for every parameter.
  """
  held, full = tree_bytes(opt_state), tree_bytes(full_opt_state)
  return (f"  optimizer state: {held:,} bytes; training every parameter would hold "
          f"{full:,}: freezing saves {full - held:,} bytes")
