"""The `ctjax` command (also `python -m ctjax`).

  ctjax train --config configs/NAME.py[:ARG] [--workdir DIR] [--verbose]
              [--config.a.b=VALUE ...]
  ctjax export --workdir DIR --to OUT [--checkpoint latest|best]
              (a Hugging Face directory that transformers loads; see ctjax/export.py)
  ctjax eval --workdir DIR [--checkpoint latest|best|STEP] [--split test]
             [--data.path=NEW_FILE] [--predictions jsonl|csv] [--config.KEY=...]
              (a checkpoint evaluated on this machine's devices, on the run's
              splits or a new file of its schema: DIR/eval/step_N/, plots, report,
              predictions; see ctjax/evaluators/standalone.py)
  ctjax monitor --workdir DIR --data NEW [--checkpoint latest|best] [--psi 0.2] ...
              (new data against the run's saved reference statistics: a table
              and a plot in DIR/monitor/NAME/, exit status 1 when drifted; see
              ctjax/monitor.py)
  ctjax adapt --workdir DIR --data NEW [--replay 0.3] [--tolerance 0.01] ...
  ctjax adapt --follow FOLDER_OR_JSONL --workdir DIR [--once] ...
              (a warm-started run on the new data mixed with a replay of the
              old, promoted only if it gains on the new without losing on the
              old; or, following new data, each window monitored and adapted to
              when it drifted; see ctjax/adapt.py)
  ctjax cv --config configs/NAME.py[:ARG] --workdir DIR [--folds 5] [--stratified]
           [--group-column COL] [--workers N] [--config.a.b=VALUE ...]
              (k-fold cross-validation, one resumable run per fold in DIR/fold_<i>,
              a table of them in DIR/cv.md and cv.csv; see ctjax/cv.py)
  ctjax compile --config configs/NAME.py[:ARG] --topology v5e-256|v4-32|h100x8|...
              [--json OUT] [--config.a.b=VALUE ...]
              (the train step compiled ahead of time for that machine, here:
              per-device memory against the chip's, FLOPs; exit status 2 when it
              does not fit; see ctjax/aot.py)
  ctjax federated server --config configs/NAME.py --workdir DIR --port P [--insecure]
  ctjax federated client --config configs/NAME.py --site S --server HOST:P
              --workdir DIR [--insecure] [--config.data.path=SITE_FILE ...]
              (config.federated deployed with Flower: a coordinating server and
              a process per site on its own data; see ctjax/flower.py)
  ctjax launch tpu --name N --zone Z --type v5litepod-16 --config ... --workdir gs://...
  ctjax launch slurm --config ... --workdir DIR --nodes N --gpus-per-node G
              (the same run on a Cloud TPU VM or a SLURM cluster; the
              --config.a.b=VALUE overrides go to it; with --sweep NAME --storage
              postgresql://..., a search's drivers on many TPU VMs or SLURM
              nodes; see ctjax/launch/)
  ctjax sweep --config configs/NAME.py[:ARG] --sweep NAME --workdir DIR
              [--workers N] [--devices-per-trial D] [--storage URL] ...
              (a sweep's or an Optuna search's trials, one resumable run each in
              DIR/trials/<overrides>, with a table and plots; also
              experiments/sweep.py; see ctjax/sweep_driver.py)

Running the same command again on a workdir resumes it. Mistakes in the config or
the data print one line naming the key, file or record, and exit with status 2
(`--verbose` or CTJAX_VERBOSE=1 adds the traceback above it).
"""
import argparse
import faulthandler
import logging
import os
import sys
import traceback

from ctjax.errors import UserError


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="ctjax", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train, or resume, a run")
  train.add_argument("--config", required=True,
                     help="configs/NAME.py, optionally :ARG for get_config(ARG)")
  train.add_argument("--workdir", default=None,
                     help="the run's folder (default runs/NAME); rerun to resume")
  train.add_argument("--verbose", action="store_true",
                     help="on an error, print the full traceback too (also "
                     "CTJAX_VERBOSE=1)")
  export = commands.add_parser(
      "export", help="write a run's model as a Hugging Face directory")
  export.add_argument("--workdir", required=True, help="the run's folder")
  export.add_argument("--to", required=True, help="the directory to write")
  export.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                      help="which checkpoint: the newest, or the best by the run's "
                      "config.checkpoint.best_metric")
  export.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")
  evaluate = commands.add_parser(
      "eval", help="run evaluators (config.evaluators) on a run's checkpoint")
  evaluate.add_argument("--workdir", required=True, help="the run's folder")
  evaluate.add_argument("--checkpoint", default="latest",
                        help="which checkpoint: latest (default), best (by the "
                        "run's config.checkpoint.best_metric), or a step")
  evaluate.add_argument("--split", default=None,
                        help="the split to evaluate (default: the run's final "
                        "ones); with --data.path, the new data's name")
  evaluate.add_argument("--predictions", default="jsonl",
                        help="jsonl (default), or csv for predictions.csv too")
  evaluate.add_argument("--verbose", action="store_true",
                        help="on an error, print the full traceback too")
  from ctjax import aot  # pylint: disable=g-import-not-at-top
  aot.add_arguments(commands.add_parser(
      "compile", help="compile the train step for a TPU slice or GPUs; will it fit?"))
  from ctjax import cv  # pylint: disable=g-import-not-at-top
  cv.add_arguments(commands.add_parser(
      "cv", help="k-fold cross-validation: a run per fold, and a table of them"))
  from ctjax import monitor  # pylint: disable=g-import-not-at-top
  monitor.add_arguments(commands.add_parser(
      "monitor", help="compare new data with a run's training data: drift"))
  from ctjax import adapt  # pylint: disable=g-import-not-at-top
  adapt.add_arguments(commands.add_parser(
      "adapt", help="adapt a run to new data, promoted only if it does no harm"))
  from ctjax import federated_cli  # pylint: disable=g-import-not-at-top
  federated_cli.add_arguments(commands.add_parser(
      "federated", help="run config.federated across sites: a server, or a site"))
  from ctjax import launch  # pylint: disable=g-import-not-at-top
  launch.add_arguments(commands.add_parser(
      "launch", help="run a config on a Cloud TPU VM or a SLURM cluster"))
  from ctjax import sweep_driver  # pylint: disable=g-import-not-at-top
  sweep_driver.add_arguments(commands.add_parser(
      "sweep", help="run a sweep's or a search's trials, and tabulate them"))
  args, rest = parser.parse_known_args(argv)
  if args.command == "export" and rest:
    parser.error(f"unrecognised arguments {' '.join(rest)!r}")
  overrides = []
  rest = list(rest)
  while rest:
    item = rest.pop(0)
    if args.command == "eval" and item.startswith("--data."):
      # --data.path=new.csv (or --data.path new.csv): new data to evaluate.
      if "=" not in item and rest and not rest[0].startswith("--"):
        item += "=" + rest.pop(0)
      item = "--config." + item[2:]
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r}; overrides look like "
                   "--config.optim.lr=0.01")
    overrides.append(item[len("--config."):])
  return args, overrides


def default_workdir(config_spec: str) -> str:
  path, _, arg = config_spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "-" + arg.replace("=", "_").replace(",", "-")
  return os.path.join("runs", name)


def main(argv: list[str] | None = None) -> None:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  # TensorFlow (TensorBoard files, TFDS) prints start-up notices on stderr, the
  # oneDNN one even before its log level applies; quiet them so that stderr holds
  # only what needs attention. A user's own settings win.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  # A crash in native code (gloo aborting when a peer process dies, say) then
  # leaves every Python thread's stack on stderr, not only C++'s last words.
  faulthandler.enable()
  try:
    if args.command == "export":
      from ctjax import export  # pylint: disable=g-import-not-at-top
      export.export_run(args.workdir, args.to, args.checkpoint)
      return
    if args.command == "cv":  # Each fold is a `ctjax train` process of its own.
      from ctjax import cv  # pylint: disable=g-import-not-at-top
      sys.exit(cv.cross_validate(args, overrides))
    if args.command == "sweep":  # Each trial is a `ctjax train` process too.
      from ctjax import sweep_driver  # pylint: disable=g-import-not-at-top
      sys.exit(sweep_driver.run_sweep(args, overrides))
    if args.command == "compile":  # For a target elsewhere: no distributed setup.
      from ctjax import aot  # pylint: disable=g-import-not-at-top
      sys.exit(aot.compile_command(args, overrides))
    if args.command == "federated":  # Flower's processes do the training.
      from ctjax import federated_cli  # pylint: disable=g-import-not-at-top
      sys.exit(federated_cli.federated_command(args, overrides))
    if args.command == "launch":  # gcloud or sbatch here; training on the target.
      from ctjax import launch  # pylint: disable=g-import-not-at-top
      sys.exit(launch.launch(args, overrides))
    from ctjax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize()
    from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
    if args.command == "monitor":  # Exit status 1: a drift threshold crossed.
      from ctjax import monitor  # pylint: disable=g-import-not-at-top
      sys.exit(monitor.monitor_command(args, overrides))
    if args.command == "adapt":  # Exit status 1: the parent kept.
      from ctjax import adapt  # pylint: disable=g-import-not-at-top
      sys.exit(adapt.adapt_command(args, overrides))
    if args.command == "eval":
      from ctjax import runs  # pylint: disable=g-import-not-at-top
      from ctjax.evaluators import standalone  # pylint: disable=g-import-not-at-top
      config = runs.read_config(args.workdir)
      for override in overrides:  # Say other evaluators than the run's own.
        config_lib.apply_override(config, override)
      standalone.run_standalone(
          config, args.workdir, args.checkpoint, split=args.split,
          new_data=any(o.startswith("data.path=") for o in overrides),
          predictions_format=args.predictions)
      return
    config = config_lib.load_config(args.config, overrides)
    workdir = args.workdir or default_workdir(args.config)
    if config.federated:  # Clients simulated in rounds (ctjax/federated.py).
      from ctjax import federated  # pylint: disable=g-import-not-at-top
      federated.train_federated(config, workdir)
    else:
      from ctjax import train  # pylint: disable=g-import-not-at-top
      train.train(config, workdir)
  except UserError as e:
    if args.verbose or os.environ.get("CTJAX_VERBOSE", "") not in ("", "0"):
      traceback.print_exc()
    print(f"ctjax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  main()
