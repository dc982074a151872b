#!/usr/bin/env python3
"""A shared MLflow for lifelong: Debian PostgreSQL as the backend store, ``mlflow server`` in front of it.

    python deploy/service.py start [--home DIR] [--pg-data DIR] [--pg-port N] [--port N]
    python deploy/service.py status [--home DIR]     # exit 0 when both run, 3 otherwise
    python deploy/service.py env [--home DIR]        # export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
    python deploy/service.py stop [--home DIR]
    python deploy/service.py train --checkpoints DIR [--torchrun ARGS] PIPELINE.toml [RUN ARGS…]

``start`` initialises a PostgreSQL cluster in the data directory the first time (``initdb``, a
generated password, scram-sha-256 on TCP, no Unix socket), starts it on 127.0.0.1 (a free port
unless ``--pg-port``), creates the database, then starts ``mlflow server`` on 127.0.0.1 with that
database as its backend store and ``HOME/artifacts`` as its artifact store (served through the
server: clients need no file access). It prints the ``MLFLOW_TRACKING_URI`` to export; trainers
(``lifelong run``, the tracker's outbox) and ``lifelong serve`` use it. ``stop`` stops the MLflow
server by process group and PostgreSQL with ``pg_ctl stop`` (its postmaster pid, SIGKILL after the
timeout). Every wait is bounded (``--timeout``).

PostgreSQL refuses to run as root. Run as root (CI, a container), the launcher runs ``initdb`` and
``pg_ctl`` as the ``postgres`` system user (``runuser``) and gives it the data directory; the
default data directory is then ``/var/lib/postgresql/lifelong``, which that user can reach (a data
directory under ``/root`` cannot be). Run as anyone else, it runs them as that user.

``train`` is the trainer's entry point in the containers: it runs ``lifelong run PIPELINE
--set checkpoint.dir=DIR`` and adds ``--resume`` when DIR already holds a checkpoint, so a
restarted container continues its session; with ``--torchrun "…"`` it runs the same under
``torchrun … -m lifelong run``. It replaces itself with that process (exec), so SIGTERM reaches it.

State lives in ``HOME`` (default ``$LIFELONG_HOME`` or ``~/.lifelong``): ``service.json`` (ports,
pids, paths), ``postgres.password`` (mode 0600), ``mlflow.log``, ``mlflow.pid`` (the same pid file
``deploy/local-service.sh`` uses, so its ``run``/``models``/``serve`` work against this server).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT_DATA = Path("/var/lib/postgresql/lifelong")  # default data directory when run as root
STATE, PASSWORD, PIDFILE, LOG = "service.json", "postgres.password", "mlflow.pid", "mlflow.log"


class ServiceError(RuntimeError):
    """A failure the user can act on; the CLI prints it as one paragraph and exits with status 1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def postgres_bin(explicit: str | None = None) -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: explicit, ``$LIFELONG_PG_BIN``, Debian's newest, or PATH."""
    explicit = explicit or os.environ.get("LIFELONG_PG_BIN")
    if explicit:  # the user's choice, or nothing: never a different PostgreSQL behind their back
        if (Path(explicit) / "pg_ctl").is_file() and (Path(explicit) / "initdb").is_file():
            return Path(explicit)
        raise ServiceError(
            f"no PostgreSQL in {explicit} (--pg-bin / LIFELONG_PG_BIN): it holds no initdb and pg_ctl. "
            "Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) and point it at its bin directory, "
            "e.g. /usr/lib/postgresql/15/bin."
        )
    candidates = []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():  # /usr/lib/postgresql/15/bin, newest major version first
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates += [str(p / "bin") for p in versions]
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else None)
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").is_file() and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise ServiceError(
        "PostgreSQL is not installed: no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH. "
        "Install it (Debian/Ubuntu: apt-get install postgresql) or point LIFELONG_PG_BIN at its bin directory."
    )


class Postgres:
    """One PostgreSQL cluster in ``data``, listening on 127.0.0.1:``port`` only (TCP, no Unix socket).

    As root, every PostgreSQL command runs as ``system_user`` (``runuser -u postgres``), which owns
    ``data``. The database role is ``user`` with a password (scram-sha-256), superuser of this
    cluster only.
    """

    def __init__(self, data: Path, port: int, password: str, user: str = "lifelong",
                 system_user: str = "postgres", bin_dir: str | None = None):
        self.data, self.port, self.password, self.user = Path(data).absolute(), port, password, user
        self.system_user = system_user
        self.bin = postgres_bin(bin_dir)
        self.as_root = os.geteuid() == 0
        self.log = self.data / "postgres.log"  # inside the data dir: the one place the postgres user can write

    # -- running PostgreSQL's own commands as the right user ------------------------------------------------
    def _command(self, *argv: str) -> list[str]:
        if not self.as_root:
            return list(argv)
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", self.system_user, "--", *argv]
        return ["su", "-s", "/bin/sh", self.system_user, "-c", shlex.join(argv)]

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            # cwd "/": the postgres user may not be able to enter the caller's directory
            return subprocess.run(self._command(*argv), cwd="/", capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ServiceError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s; see {self.log}") from e

    def _check_system_user(self) -> None:
        if not self.as_root:
            return
        import pwd

        try:
            pwd.getpwnam(self.system_user)
        except KeyError:
            raise ServiceError(
                f"running as root, PostgreSQL must run as the system user {self.system_user!r}, which does not exist. "
                "Debian's postgresql package creates it (apt-get install postgresql), or run the launcher as "
                "an ordinary user."
            ) from None

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self, timeout: float = 120) -> None:
        """``initdb`` the cluster unless ``data`` already holds one; as root, hand ``data`` to the postgres user."""
        self._check_system_user()
        if self.initialised():
            return
        if self.data.exists() and any(self.data.iterdir()):
            raise ServiceError(f"{self.data} is neither empty nor a PostgreSQL data directory: choose another --pg-data")
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data, 0o700)
        if self.as_root:
            shutil.chown(self.data, self.system_user, self.system_user)
            probe = self._run("test", "-w", str(self.data), "-a", "-x", str(self.data), timeout=30)
            if probe.returncode != 0:
                raise ServiceError(
                    f"the {self.system_user} user cannot reach {self.data}: a folder above it is not searchable "
                    f"by that user (e.g. /root is mode 0700). Choose a data directory it can reach with --pg-data, "
                    f"e.g. {ROOT_DATA} or one under /tmp."
                )
        with tempfile.NamedTemporaryFile("w", prefix="lifelong-pw-", delete=False) as pwfile:
            pwfile.write(self.password + "\n")
        try:
            if self.as_root:
                shutil.chown(pwfile.name, self.system_user, self.system_user)
            done = self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile.name}",
                "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-instructions",
                timeout=timeout,
            )
        finally:
            os.unlink(pwfile.name)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed in {self.data} (exit status {done.returncode}): {done.stderr.strip()}")

    def pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid`` when that process is alive, else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self, timeout: float = 60) -> None:
        """Start the cluster on 127.0.0.1:port and wait (``pg_ctl -w -t``) until it accepts connections."""
        if self.pid() is not None:
            return
        if port_open(self.port):
            raise ServiceError(f"port {self.port} on 127.0.0.1 is taken: choose another --pg-port")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        done = self._run(
            str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", str(int(timeout)), "-o", options, timeout=timeout + 10,
        )
        if done.returncode != 0:
            raise ServiceError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port} within {timeout:.0f} s "
                f"(pg_ctl exit status {done.returncode}): {done.stdout.strip()} {done.stderr.strip()}; see {self.log}"
            )

    def stop(self, timeout: float = 30) -> None:
        """``pg_ctl stop -m fast``; if the postmaster is still there after ``timeout``, SIGKILL it."""
        pid = self.pid()
        if pid is None:
            return
        try:
            self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w",
                      "-t", str(int(timeout)), timeout=timeout + 10)
        except ServiceError:
            pass
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)  # root, or the same user: allowed
            deadline = time.monotonic() + 10
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)

    # -- the database -------------------------------------------------------------------------------------
    def connect(self, database: str = "postgres", timeout: float = 5):
        try:
            import psycopg2
        except ImportError:
            raise ServiceError(
                "psycopg2 is not installed: MLflow needs it for a PostgreSQL store (pip install 'lifelong[postgres]', "
                "or pip install psycopg2-binary)"
            ) from None
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=max(1, int(timeout)))

    def create_database(self, name: str, timeout: float = 30) -> None:
        """CREATE DATABASE ``name`` unless it exists (retried until ``timeout``: the server may still be starting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = self.connect(timeout=5)
                break
            except ServiceError:
                raise
            except Exception as e:  # psycopg2.OperationalError while starting up
                if time.monotonic() > deadline:
                    raise ServiceError(f"cannot connect to PostgreSQL on 127.0.0.1:{self.port}: {e}") from e
                time.sleep(0.2)
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def uri(self, database: str, with_password: bool = True) -> str:
        secret = f":{quote(self.password, safe='')}" if with_password else ""
        return f"postgresql+psycopg2://{self.user}{secret}@127.0.0.1:{self.port}/{database}"


class MlflowServer:
    """``mlflow server`` in its own process group, on 127.0.0.1:port, backed by ``backend_uri``."""

    def __init__(self, home: Path, port: int, backend_uri: str, artifacts: Path, allowed_hosts: str | None = None):
        self.home, self.port, self.backend_uri, self.artifacts = home, port, backend_uri, artifacts
        self.allowed_hosts = allowed_hosts
        self.uri = f"http://127.0.0.1:{port}"
        self.pidfile, self.log = home / PIDFILE, home / LOG

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 120) -> None:
        if self.pid() is not None:
            return
        if port_open(self.port):
            raise ServiceError(f"port {self.port} on 127.0.0.1 is taken: choose another --port")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--artifacts-destination", str(self.artifacts)]
        # the backend URI holds the password: through the environment, not the command line `ps` shows
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri}
        if self.allowed_hosts:
            env["MLFLOW_SERVER_ALLOWED_HOSTS"] = self.allowed_hosts
        with open(self.log, "ab") as log:
            process = subprocess.Popen(command, cwd=self.home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                status = process.poll()
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise ServiceError(
                    f"mlflow server did not answer on {self.uri}/health within {timeout:.0f} s "
                    f"(exit status {status}); the end of {self.log}:\n  " + "\n  ".join(tail)
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the server's process group (its workers too), SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pidfile.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (start() failing)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (the postgres user's postmaster)
        pass
    # a zombie whose parent is gone still answers kill(0): read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- the commands ---------------------------------------------------------------------------------------------
def home_of(args) -> Path:
    home = Path(args.home or os.environ.get("LIFELONG_HOME") or Path.home() / ".lifelong").absolute()
    home.mkdir(parents=True, exist_ok=True)
    return home


def load_state(home: Path) -> dict:
    try:
        return json.loads((home / STATE).read_text())
    except FileNotFoundError:
        return {}


def save_state(home: Path, state: dict) -> None:
    tmp = home / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(home / STATE)


def password_of(home: Path, data: Path, initialised: bool) -> str:
    path = home / PASSWORD
    if path.is_file():
        return path.read_text().strip()
    if initialised:
        raise ServiceError(
            f"{data} holds a PostgreSQL cluster but {path} (its password) is missing: restore it, "
            "or remove the data directory to start a new, empty store"
        )
    password = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def parts(home: Path, state: dict) -> tuple[Postgres | None, MlflowServer | None]:
    if not state:
        return None, None
    pg = Postgres(Path(state["pg_data"]), state["pg_port"], password_of(home, Path(state["pg_data"]), True),
                  user=state["pg_user"], system_user=state["pg_system_user"], bin_dir=state.get("pg_bin"))
    server = MlflowServer(home, state["port"], pg.uri(state["database"]), Path(state["artifacts"]),
                          state.get("allowed_hosts"))
    return pg, server


def cmd_start(args) -> int:
    home = home_of(args)
    state = load_state(home)
    if state:
        pg, server = parts(home, state)
        if pg.pid() is not None and server.pid() is not None and server.healthy():
            print(f"already running: MLflow at {server.uri}, PostgreSQL on 127.0.0.1:{pg.port}", file=sys.stderr)
            print(f"export MLFLOW_TRACKING_URI={server.uri}")
            return 0
    default_data = ROOT_DATA if os.geteuid() == 0 else home / "postgres"
    data = Path(args.pg_data or state.get("pg_data") or default_data).absolute()
    pg_port = args.pg_port or free_port()
    port = free_port() if args.port == 0 else args.port
    initialised = (data / "PG_VERSION").is_file()
    pg = Postgres(data, pg_port, password_of(home, data, initialised), user=args.pg_user,
                  system_user=args.pg_system_user, bin_dir=args.pg_bin)
    pg.init(timeout=args.timeout)
    pg.start(timeout=args.timeout)
    try:
        pg.create_database(args.database, timeout=args.timeout)
        server = MlflowServer(home, port, pg.uri(args.database), Path(args.artifacts or home / "artifacts").absolute(),
                              args.allowed_hosts)
        state = {
            "pg_data": str(data), "pg_port": pg_port, "pg_user": args.pg_user, "pg_system_user": args.pg_system_user,
            "pg_bin": str(pg.bin), "database": args.database, "port": port, "artifacts": str(server.artifacts),
            "allowed_hosts": args.allowed_hosts, "tracking_uri": server.uri,
            "backend_store_uri": pg.uri(args.database, with_password=False),
        }
        save_state(home, state)
        server.start(timeout=args.timeout)
    except BaseException:
        pg.stop()
        raise
    print(f"PostgreSQL on 127.0.0.1:{pg_port} (data: {data}, log: {pg.log})", file=sys.stderr)
    print(f"MLflow server at {server.uri}, backend {state['backend_store_uri']}, artifacts {server.artifacts} "
          f"(log: {server.log})", file=sys.stderr)
    print(f"export MLFLOW_TRACKING_URI={server.uri}")
    return 0


def cmd_status(args) -> int:
    home = home_of(args)
    state = load_state(home)
    if not state:
        print(f"not started (no {home / STATE})")
        return 3
    pg, server = parts(home, state)
    pg_pid, server_pid = pg.pid(), server.pid()
    healthy = server_pid is not None and server.healthy()
    print(f"postgresql: {'running, pid %d' % pg_pid if pg_pid else 'stopped'} on 127.0.0.1:{pg.port} ({pg.data})")
    print(f"mlflow:     {('running, pid %d' % server_pid) if server_pid else 'stopped'}"
          f"{'' if healthy or not server_pid else ' (not answering /health)'} at {server.uri}")
    print(f"backend:    {state['backend_store_uri']}")
    return 0 if pg_pid and healthy else 3


def cmd_env(args) -> int:
    state = load_state(home_of(args))
    if not state:
        raise ServiceError("not started: run `python deploy/service.py start` first")
    print(f"export MLFLOW_TRACKING_URI={state['tracking_uri']}")
    return 0


def cmd_stop(args) -> int:
    home = home_of(args)
    state = load_state(home)
    if not state:
        print("not running")
        return 0
    pg, server = parts(home, state)
    server.stop(timeout=args.timeout)
    print("mlflow: stopped")
    pg.stop(timeout=args.timeout)
    print("postgresql: stopped")
    return 0


def cmd_train(args) -> int:
    """exec ``lifelong run`` (or ``torchrun … -m lifelong run``), with ``--resume`` when a checkpoint exists."""
    from lifelong import checkpoint

    directory = Path(args.checkpoints)
    directory.mkdir(parents=True, exist_ok=True)
    run = [args.pipeline, "--set", f"checkpoint.dir={json.dumps(str(directory))}"]
    if checkpoint.checkpoints(directory):
        run.append("--resume")
        print(f"resuming the session checkpointed in {directory}", file=sys.stderr, flush=True)
    extra = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    if args.torchrun:
        argv = ["torchrun", *shlex.split(args.torchrun), "-m", "lifelong", "run", *run, *extra]
    else:
        argv = [sys.executable, "-m", "lifelong", "run", *run, *extra]
    print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)
    return 127  # not reached


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="deploy/service.py", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="state, logs and artifacts (default $LIFELONG_HOME or ~/.lifelong)")
    common.add_argument("--timeout", type=float, default=120, help="seconds each start or stop may take")
    start = sub.add_parser("start", parents=[common], help="start PostgreSQL and the MLflow server")
    start.add_argument("--pg-data", default=os.environ.get("LIFELONG_PG_DATA"),
                       help=f"PostgreSQL data directory (default $LIFELONG_PG_DATA, else HOME/postgres; as root {ROOT_DATA})")
    start.add_argument("--pg-port", type=int, default=int(os.environ.get("LIFELONG_PG_PORT", 0)),
                       help="PostgreSQL port on 127.0.0.1 (default: a free one)")
    start.add_argument("--port", type=int, default=int(os.environ.get("LIFELONG_MLFLOW_PORT", 5000)),
                       help="MLflow server port on 127.0.0.1 (default 5000; 0: a free one)")
    start.add_argument("--database", default="mlflow", help="database of the MLflow store")
    start.add_argument("--pg-user", default="lifelong", help="PostgreSQL role MLflow connects as")
    start.add_argument("--pg-system-user", default="postgres", help="system user PostgreSQL runs as under root")
    start.add_argument("--pg-bin", help="PostgreSQL bin directory (default: Debian's newest, or PATH)")
    start.add_argument("--artifacts", help="artifact store directory (default HOME/artifacts)")
    start.add_argument("--allowed-hosts", help="MLflow's allowed Host headers (default: localhost and private IPs)")
    sub.add_parser("status", parents=[common], help="say what runs; exit 0 when both run, 3 otherwise")
    sub.add_parser("env", parents=[common], help="print the MLFLOW_TRACKING_URI export line")
    sub.add_parser("stop", parents=[common], help="stop the MLflow server and PostgreSQL")
    train = sub.add_parser("train", help="lifelong run PIPELINE with --resume when DIR holds a checkpoint (exec)")
    # options first: everything after PIPELINE goes to `lifelong run` unchanged
    train.add_argument("--checkpoints", required=True, help="the checkpoint directory ([checkpoint] dir)")
    train.add_argument("--torchrun", help='run under torchrun with these arguments, e.g. "--nproc-per-node 2"')
    train.add_argument("pipeline", help="the pipeline file")
    train.add_argument("run_args", nargs=argparse.REMAINDER, help="more `lifelong run` arguments")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"start": cmd_start, "status": cmd_status, "env": cmd_env, "stop": cmd_stop, "train": cmd_train}
    try:
        return commands[args.command](args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
