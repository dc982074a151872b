"""MLflow on PostgreSQL, end to end, through the launcher users run (deploy/service.py).

The launcher starts Debian PostgreSQL (as the ``postgres`` user when the test runs as root, as CI
does) and a real ``mlflow server`` backed by it; a real ``lifelong run`` registers its generations
there; the rows are read back from PostgreSQL itself; ``lifelong serve`` loads the newest version
from that server and scores a batch; ``stop`` leaves nothing running; a second ``start`` finds the
same registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kafka_broker import unavailable
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.process_group import ProcessGroup
from tests.fixtures.postgres import LAUNCHER, launcher, missing, pg_data_dir, postgres  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def service(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=ROOT)


def port_open(port: int) -> bool:
    return launcher().port_open(port)


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except (OSError, urllib.error.HTTPError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready within {timeout} s (exit status {process.poll()})") from None
            time.sleep(0.25)


def host_answer(uri: str, host: str) -> int:
    """The status the server gives an API call carrying this Host header (MLflow rejects unknown hosts)."""
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def needs_postgres():
    why = missing()
    if why:
        unavailable(why)


@pytest.mark.slow
def test_a_pipeline_registers_its_generations_in_a_postgres_backed_mlflow_and_serve_loads_them(tmp_path, needs_postgres):
    import psycopg2
    from mlflow import MlflowClient

    home, data = tmp_path / "home", pg_data_dir()
    try:
        clock = time.monotonic()

        def phase(name):  # measured phases, shown with pytest -s
            print(f"{name}: {time.monotonic() - clock:.1f} s", flush=True)

        # the Host headers deploy/compose.yaml allows: the containers call the server "mlflow:5000"
        allowed = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]["mlflow"]["environment"][
            "MLFLOW_SERVER_ALLOWED_HOSTS"
        ]
        started = service("start", "--home", str(home), "--pg-data", str(data), "--port", "0", "--timeout", "90",
                          "--allowed-hosts", allowed)
        assert started.returncode == 0, started.stderr
        exports = [line for line in started.stdout.splitlines() if line.startswith("export MLFLOW_TRACKING_URI=")]
        assert len(exports) == 1, started.stdout
        uri = exports[0].split("=", 1)[1]
        state = json.loads((home / "service.json").read_text())
        assert state["backend_store_uri"].startswith("postgresql+psycopg2://lifelong@127.0.0.1:")
        assert service("status", "--home", str(home)).returncode == 0
        assert host_answer(uri, "mlflow:5000") == 200 and host_answer(uri, "elsewhere:5000") == 403
        if os.geteuid() == 0:  # PostgreSQL refuses root: the launcher must have run it as the postgres user
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            uid = int(Path(f"/proc/{postmaster}/status").read_text().split("Uid:")[1].split()[0])
            import pwd

            assert uid == pwd.getpwnam("postgres").pw_uid

        phase("launcher start")
        # a real pipeline, as a user runs it, against the tracking URI the launcher printed: as 2 data-parallel
        # ranks, of which rank 0 alone registers (2 generations, not 4)
        run = subprocess.run(
            [sys.executable, "-m", "lifelong.cli", "run", "--nproc", "2", "--summary", str(tmp_path / "summary.json"),
             "--set", "learner.progress=false", "--set", "learner.strategies=['naive']",
             "--set", "stream.experiences=2", "--set", "learner.epochs=1"],
            cwd=tmp_path, env={**ENV, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=240,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["ranks"] == 2 and len(summary["generations"]) == 2

        phase("lifelong run")
        # the registry, through the server ...
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        client = MlflowClient(uri)
        versions = client.search_model_versions("name = 'lifelong'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        # ... and the rows in PostgreSQL itself
        password = (home / "postgres.password").read_text().strip()
        conn = psycopg2.connect(host="127.0.0.1", port=state["pg_port"], user="lifelong", password=password,
                                dbname="mlflow", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version, run_id FROM model_versions WHERE name = 'lifelong' ORDER BY version")
                rows = cur.fetchall()
                cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (rows[-1][1],))
                run_status = cur.fetchone()
        finally:
            conn.close()
        assert [r[0] for r in rows] == [1, 2]
        assert {r[1] for r in rows} == {v.run_id for v in versions}
        assert run_status == ("FINISHED",)

        # lifelong serve loads the newest version from that server (artifacts through the server) and scores
        port = free_port()
        served = subprocess.Popen(
            [sys.executable, "-m", "lifelong.cli", "serve", "models:/lifelong@latest", "--port", str(port),
             "--tracking-uri", uri, "--log-level", "warning"],
            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            assert wait_ready(f"http://127.0.0.1:{port}/ready", served, timeout=90) == {"ready": True, "version": "2"}
            phase("lifelong serve ready")
            from sklearn.datasets import load_digits

            digits = load_digits()
            body = json.dumps({"instances": (digits.data[:8] / 16.0).tolist()}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                             {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                scored = json.loads(answer.read())
            assert scored["version"] == "2" and len(scored["predictions"]) == 8
            assert set(scored["predictions"]) <= {str(c) for c in range(10)}
        finally:
            group = ProcessGroup()
            group.process = served
            group.stop(stop_timeout=20)

        stopped = service("stop", "--home", str(home))
        phase("launcher stop")
        assert stopped.returncode == 0, stopped.stderr
        assert service("status", "--home", str(home)).returncode == 3
        assert not port_open(state["port"]) and not port_open(state["pg_port"])
        assert not (data / "postmaster.pid").exists()

        # started again (same home, same cluster; new free ports): the registry is still there
        again = service("start", "--home", str(home), "--port", "0", "--timeout", "90")
        assert again.returncode == 0, again.stderr
        uri = again.stdout.strip().rsplit("=", 1)[1]
        assert json.loads((home / "service.json").read_text())["pg_data"] == str(data)
        assert sorted(int(v.version) for v in MlflowClient(uri).search_model_versions("name = 'lifelong'")) == [1, 2]
        phase("started again")
    finally:
        service("stop", "--home", str(home))  # whatever failed above: nothing may stay running
        shutil.rmtree(data.parent, ignore_errors=True)


def test_missing_postgresql_names_the_package_to_install(tmp_path):
    done = service("start", "--home", str(tmp_path), "--pg-bin", str(tmp_path / "nowhere"), timeout=60)
    assert done.returncode == 1
    assert "apt-get install postgresql" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the root path: the postgres user cannot reach a 0700 folder")
def test_as_root_a_data_dir_the_postgres_user_cannot_reach_is_refused_clearly(tmp_path, needs_postgres):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    done = service("start", "--home", str(tmp_path / "home"), "--pg-data", str(locked / "data"), timeout=60)
    assert done.returncode == 1
    assert "cannot reach" in done.stderr and "--pg-data" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_postgres_fixture_serves_sql_and_stops(postgres):
    conn = postgres.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, inet_server_addr()::text")
            assert cur.fetchone() == ("lifelong", "127.0.0.1/32")
    finally:
        conn.close()
    pid = postgres.pid()
    assert pid is not None
    postgres.stop(timeout=30)
    assert postgres.pid() is None and not port_open(postgres.port)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and Debian's python3")
def test_the_launcher_runs_postgres_as_an_ordinary_user_too(tmp_path, needs_postgres):
    """As a non-root user (here: the postgres user, with Debian's python3), initdb and pg_ctl run directly."""
    work = Path(pg_data_dir()).parent
    try:
        shutil.copy(LAUNCHER, work / "service.py")  # the checkout may sit where the postgres user cannot read
        for path in (work, work / "service.py"):
            shutil.chown(path, "postgres", "postgres")
        script = (
            "import sys; sys.path.insert(0, sys.argv[1]); import service as s\n"
            "pg = s.Postgres(s.Path(sys.argv[2]), s.free_port(), 'secret')\n"
            "assert not pg.as_root\n"
            "pg.init(timeout=60); pg.start(timeout=60)\n"
            "assert pg.pid() and s.port_open(pg.port)\n"
            "pg.stop(timeout=30)\n"
            "assert pg.pid() is None and not s.port_open(pg.port)\n"
            "print('ok')\n"
        )
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", "/usr/bin/python3", "-c", script, str(work), str(work / "data")],
            cwd="/", capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
