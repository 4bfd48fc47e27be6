"""An MLP diagnosing breast tumours from a CSV table, read as a user's file would be.

  ctjax train --config configs/clinical_csv.py --workdir runs/clinical_csv

The data is scikit-learn's bundled Wisconsin breast-cancer table (569 patients, 30
numeric measurements of cell nuclei, diagnosis benign or malignant). On first use
the config exports it to ~/.cache/ctjax/breast_cancer.csv (`:csv=PATH` picks
another file), one row per patient:

  mean radius,mean texture,...,worst fractal dimension,diagnosis
  17.99,10.38,...,0.1189,malignant

From there on nothing is special: the `csv` source reads the file, takes the label
names (sorted: benign = 0, malignant = 1) and each column's mean and standard
deviation from the training split only, saves them in WORKDIR/data_state.json, and
divides the rows 70/15/15 into train/validation/test (seeded, stratified by
diagnosis). Point `csv=` at a table of your own with a `diagnosis` column and
numeric features, and it trains on that.

Measured with the command above (1 CPU device of a 2-core machine, jax 0.10.2,
600 steps; 23 s including start-up, the evaluations with 1000 bootstrap
resamples, the plots and WORKDIR/report.html; 8 fake devices give the same figures):
  validation/accuracy 0.977 (84/86), validation/loss 0.061, roc_auc 0.999
  test/accuracy       0.953 (82/86; 95% bootstrap interval 0.898 to 0.989),
  test/loss 0.170, test/balanced_accuracy 0.938, test/roc_auc 0.980 (binned in 4096
  bins: exact to 0), test/expected_calibration_error 0.020
  per diagnosis (test): benign 54/54 right, malignant 28/32 (0.875, interval 0.739
  to 0.973): the errors are all missed malignancies, which the report's review
  queue lists.
scikit-learn's LogisticRegression fitted on the same (standardised) training split
scores 0.953 on the same test split.
"""
import csv
import os

from ml_collections import ConfigDict

from ctjax.config import parse_arg

DEFAULT_CSV = "~/.cache/ctjax/breast_cancer.csv"


def export_csv(path: str) -> None:
  """Writes scikit-learn's breast-cancer table to `path` as a clinical CSV."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  bunch = datasets.load_breast_cancer()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  # Written whole, then renamed: several processes may export at once.
  with open(path + f".{os.getpid()}.tmp", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*bunch.feature_names, "diagnosis"])
    for features, target in zip(bunch.data, bunch.target):
      writer.writerow([*(f"{x:g}" for x in features), bunch.target_names[target]])
  os.replace(path + f".{os.getpid()}.tmp", path)


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, csv=DEFAULT_CSV, steps=600)
  path = os.path.expanduser(arg.csv)
  if arg.csv == DEFAULT_CSV and not os.path.exists(path):
    export_csv(path)
  c = ConfigDict()
  c.seed = 0
  c.data = dict(source="csv", path=path, label_column="diagnosis",
                missing="error", standardize=True,
                split_fractions={"train": 0.7, "validation": 0.15, "test": 0.15},
                split_seed=0, stratify=True,
                # In memory, a batch costs less than handing it between threads.
                num_threads=1, prefetch=0)
  c.model = dict(name="mlp", num_classes=2, hidden_sizes=(64,), dropout=0.1)
  c.batch_size = 32
  c.train_duration = arg.steps
  c.optim = dict(name="adamw", lr=1e-3, weight_decay=1e-4,
                 schedule=dict(name="warmup_cosine", warmup="20 steps"))
  c.log_every = 50
  # The task's metrics on validation every 100 steps, and at the end on validation
  # and test with ROC-AUC, calibration and bootstrap intervals, overall and per
  # diagnosis (the recall of each class, with its interval).
  c.data.slices = {"diagnosis": "label"}
  c.evaluators = (dict(type="metrics", splits=("validation",), every=100,
                       final_splits=("validation", "test"), auc_bins=4096,
                       calibration_bins=10, brier=True, resamples=1000),)
  c.checkpoint = dict(every=100, keep=2, best_metric="validation/accuracy")
  return c
