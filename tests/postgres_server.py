"""A real PostgreSQL server for tests, started in a temporary folder.

Debian's `postgresql` package (which .ci/run installs where it is missing)
provides the binaries in /usr/lib/postgresql/<version>/bin. The server listens
on a Unix socket in its own folder and on 127.0.0.1 at a free port, with trust
authentication, and is stopped (and its folder removed) at the end. PostgreSQL
refuses to run as root, so as root it runs as the package's `postgres` user.

  with postgres_server.running(tmp_path) as url:   # postgresql://...@127.0.0.1:P/ctjax
    ...
"""
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator


def binaries() -> str | None:
  """The folder of initdb and pg_ctl (newest version), or None."""
  found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                 key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit()
                 else 0)
  if found:
    return os.path.dirname(found[-1])
  initdb = shutil.which("initdb")
  return os.path.dirname(initdb) if initdb else None


def unavailable() -> str:
  """Why no server can be started here ("" if one can)."""
  if binaries() is None:
    return ("PostgreSQL's initdb was not found (Debian: apt-get install "
            "postgresql; .ci/run does this)")
  if os.geteuid() == 0:
    try:
      pwd.getpwnam("postgres")
    except KeyError:
      return "running as root without a `postgres` user to run the server as"
  return ""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(directory: os.PathLike) -> Iterator[str]:
  """Starts a server with a database `ctjax` in `directory`/postgres; yields its
  SQLAlchemy URL."""
  bin_dir, root = binaries(), os.path.join(directory, "postgres")
  data, user = os.path.join(root, "data"), pwd.getpwuid(os.geteuid()).pw_name
  os.makedirs(root)
  prefix = []
  if os.geteuid() == 0:  # PostgreSQL will not run as root.
    user = "postgres"
    entry = pwd.getpwnam(user)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    # The test's tmp folders are root's (mode 700): let the server reach its own.
    for parent in _parents(root):
      os.chmod(parent, os.stat(parent).st_mode | 0o711)
    prefix = ["runuser", "-u", user, "--"]
  port = _free_port()

  def run(*command: str) -> None:
    done = subprocess.run([*prefix, *command], capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
      raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")

  run(os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", user,
      "--no-sync")
  run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-w", "-l",
      os.path.join(root, "server.log"), "-o",
      f"-k {root} -h 127.0.0.1 -p {port} -F", "start")
  try:
    run(os.path.join(bin_dir, "createdb"), "-h", "127.0.0.1", "-p", str(port),
        "-U", user, "ctjax")
    yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/ctjax"
  finally:
    subprocess.run([*prefix, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m",
                    "immediate", "stop"], capture_output=True, timeout=120)


def _parents(path: str) -> list[str]:
  """`path`'s folders from the top of the temporary tree down to it."""
  parents, path = [], os.path.abspath(path)
  while path not in ("/", os.path.dirname(path)):
    parents.append(path)
    path = os.path.dirname(path)
  return [p for p in reversed(parents) if p.startswith(("/tmp", os.path.realpath(
      os.environ.get("TMPDIR", "/tmp"))))]
