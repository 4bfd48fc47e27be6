"""The `ctjax federated server|client` commands: a Flower SuperLink running
ctjax/flower.py's server app, or a Flower SuperNode running its client app at a
site. See ctjax/flower.py for what a deployed round does.

Flower is imported only by the processes Flower starts, so that these commands
check the config and the site's data (exit status 2) before anything connects.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from ctjax.errors import UserError

def add_arguments(parser: argparse.ArgumentParser) -> None:
  roles = parser.add_subparsers(dest="role", required=True)
  server = roles.add_parser("server", help="coordinate the sites' rounds")
  client = roles.add_parser("client", help="train one site's rounds on its data")
  for sub in (server, client):
    sub.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    sub.add_argument("--workdir", required=True, help="this process's folder")
    sub.add_argument("--insecure", action="store_true",
                     help="no TLS (a trusted network, or localhost)")
    sub.add_argument("--verbose", action="store_true",
                     help="on an error, print the full traceback too")
  server.add_argument("--port", type=int, default=9092,
                      help="where the sites connect (the SuperLink's port)")
  server.add_argument("--host", default="0.0.0.0", help="the address to listen on")
  for name in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"):
    server.add_argument(name, default=None, help="TLS, unless --insecure")
  client.add_argument("--site", required=True,
                      help="this site's name: its partition_column value, or "
                      "its client number")
  client.add_argument("--server", required=True, help="HOST:PORT of the server")
  client.add_argument("--port", type=int, default=9094,
                      help="a free local port for this site's Flower runtime")
  client.add_argument("--root-certificates", default=None,
                      help="the CA certificate to check the server's, unless "
                      "--insecure")


def _flower_tool(name: str) -> str:
  """A Flower command of this Python's environment."""
  path = os.path.join(os.path.dirname(sys.executable), name)
  return path if os.path.exists(path) else name


def _environment() -> dict[str, str]:
  """This environment's commands first on PATH: Flower starts its own helpers
  (flower-superexec, flwr-serverapp, flwr-clientapp) by name."""
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return env


def _listening(port: int) -> bool:
  """Whether something accepts connections on this machine's `port`."""
  try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True
  except OSError:
    return False


def _tls_arguments(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
  given = [(n, getattr(args, n.lstrip("-").replace("-", "_"))) for n in names]
  if args.insecure:
    return ["--insecure"]
  if not all(value for _, value in given):
    raise UserError(f"ctjax federated {args.role}: give {', '.join(names)}, or "
                    "--insecure for a trusted network")
  return [x for name, value in given for x in (name, value)]


def _checked_config(args: argparse.Namespace, overrides: list[str]) -> Any:
  """The config, checked as far as can be before any process starts."""
  from ctjax import config as config_lib, federated  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config, overrides)
  if not config.federated:
    raise UserError(f"{args.config}: config.federated is not set; ctjax federated "
                    "needs its clients, rounds and algorithm")
  federated._options(config)  # pylint: disable=protected-access
  if config.get("privacy"):
    raise UserError("config.privacy: DP-FedAvg is simulated only (ctjax train); "
                    "deployed, drop config.privacy")
  return config


def run_server(args: argparse.Namespace, overrides: list[str]) -> int:
  """Starts a SuperLink, runs `server_app` on it with `flwr run`, stops it."""
  config = _checked_config(args, overrides)
  tls = _tls_arguments(args, ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"))
  workdir = os.path.abspath(args.workdir)
  home = os.path.join(workdir, "flower")
  app = os.path.join(home, "app")
  os.makedirs(app, exist_ok=True)
  from ctjax import federated, flower  # pylint: disable=g-import-not-at-top
  # The evaluation data opened now, so a wrong file stops here.
  fed = federated.prepare(config, workdir, only_splits=flower.evaluated_splits(config))
  if not fed.loaders:
    raise UserError("config.data.splits: the server reads its evaluation splits "
                    "(config.eval_splits, final_eval_splits), at least one, for "
                    "the model's input shapes and to evaluate the global model")
  with open(os.path.join(app, "pyproject.toml"), "w") as f:
    f.write(flower.APP_PYPROJECT)
  with open(os.path.join(home, "config.toml"), "w") as f:
    f.write(f'[superlink]\ndefault = "ctjax"\n\n[superlink.ctjax]\n'
            f'address = "127.0.0.1:{args.port}"\ninsecure = {str(args.insecure).lower()}\n'
            + ("" if args.insecure else f'root-certificates = "{args.ssl_ca_certfile}"\n'))
  outcome_path = os.path.join(home, "outcome.json")
  if os.path.exists(outcome_path):
    os.remove(outcome_path)
  env = dict(_environment(), FLWR_HOME=home)
  log_path = os.path.join(home, "superlink.log")
  if _listening(args.port):
    raise UserError(f"--port {args.port}: another process listens there; choose "
                    "a free port")
  with open(log_path, "a") as log:
    link = subprocess.Popen(
        [_flower_tool("flower-superlink"), *tls, "--host", args.host, "--port",
         str(args.port), "--database", os.path.join(home, "state.db"),
         "--disable-runtime-dependency-installation"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + 120  # Seconds on a busy machine.
    while not _listening(args.port):
      if link.poll() is not None or time.monotonic() > deadline:
        raise UserError(f"the Flower SuperLink did not start; see {log_path}")
      time.sleep(0.2)
    subprocess.run([_flower_tool("flwr"), "run", app, "ctjax", "--stream",
                    "--run-config", f'workdir="{workdir}"'], env=env)
  finally:
    link.terminate()
    try:
      link.wait(timeout=30)
    except subprocess.TimeoutExpired:
      link.kill()
  if not os.path.exists(outcome_path):
    raise UserError(f"the Flower run ended without an outcome; see {log_path}")
  with open(outcome_path) as f:
    outcome = json.load(f)
  if outcome["status"] != "finished":
    print(f"ctjax: error: {outcome['error']}", file=sys.stderr, flush=True)
    return outcome["exit_status"]
  return 0


def run_client(args: argparse.Namespace, overrides: list[str]) -> int:
  """Checks this site's config and data, then becomes a Flower SuperNode."""
  # pylint: disable=g-import-not-at-top
  from ctjax import federated
  # pylint: enable=g-import-not-at-top
  config = _checked_config(args, overrides)
  tls = _tls_arguments(args, ("--root-certificates",))
  workdir = os.path.abspath(args.workdir)
  # This site's data opened now (fitting data_state.json if it has none), so a
  # wrong file stops here, not in the first round.
  fed = federated.prepare(config, workdir, only_splits=("train",))
  if "train" not in fed.splits:
    raise UserError("config.data: a site trains on a split named 'train'")
  from ctjax import flower  # pylint: disable=g-import-not-at-top
  examples = flower.site_examples(fed, args.site)
  from ctjax import writers  # pylint: disable=g-import-not-at-top
  writers.info(f"site {args.site!r}: {len(examples)} training examples; "
               f"connecting to {args.server}")
  os.makedirs(os.path.join(workdir, "flower"), exist_ok=True)
  node_config = f'site="{args.site}" workdir="{workdir}"'
  command = [_flower_tool("flower-supernode"), *tls, "--superlink", args.server,
             "--port", str(args.port), "--node-config", node_config]
  sys.stdout.flush()
  os.execvpe(command[0], command,
             dict(_environment(), FLWR_HOME=os.path.join(workdir, "flower")))
  return 0  # Not reached: this process is the SuperNode now.


def federated_command(args: argparse.Namespace, overrides: list[str]) -> int:
  return (run_server if args.role == "server" else run_client)(args, overrides)
