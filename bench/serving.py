"""Serving: ``lifelong serve`` against ``mlflow models serve``, side by side, on the same generation.

One registered generation (an MLP [256, 256] on 8×8 digit images, 10 named classes: the default
pipeline's model, freshly initialised: scoring cost does not depend on training) in a temporary
sqlite store is served by

- ``mlflow models serve -m models:/bench/1 --env-manager local`` (MLflow's scoring server: uvicorn,
  one worker, the generation through ``mlflow.pyfunc`` with its signature enforced), and
- ``lifelong serve models:/bench@champion`` (one process, micro-batching, following the alias).

Both servers run side by side (idle but for the load), and each gets the same bounded
**closed-loop** load on loopback: C clients, each with one keep-alive HTTP/1.1 connection, sending a
batch-1 request and waiting for its answer before the next, for ``--seconds`` after a one-second
warm-up; C = 1 and 32. Every point is measured ``--rounds`` times, the servers alternating within a
round, so a change in the shared machine's background load hits both alike; the median round is
reported with the range. Every request carries the same image (as nested lists of shape (1, 8, 8):
the form both servers accept); every answer must be a 200. The load generator is one asyncio
process on the same machine (both servers pay for it equally). Reported per server and C:
requests/s, p50 and p99 latency, failures.

**Hot swap.** Then, with ``lifelong serve`` under the 32-client load, ``champion`` is moved to a
second version (same architecture, other weights) and later back; the p99 of the requests that
were in flight from each move until one second after the first answer from the new version is
reported against the steady-state p99, with the failures (there must be none).

Target: ``lifelong serve`` ≥ 3× mlflow's throughput at 32 clients at no worse p99.

    OMP_NUM_THREADS=1 python bench/serving.py [--seconds 5] [--rounds 3] [--clients 1 32] [--name serving]

Writes bench/results/<name>.{json,md}. Both servers run with ``OMP_NUM_THREADS`` as given (1 on
the 2-core reference machine: the load generator needs the other core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import git_commit, provenance, source_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fixtures: the port helper the tests use
from tests.fixtures.mlflow_server import free_port  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TARGET_RATIO = 3.0
NAME = "bench"
START_TIMEOUT = 180.0
REQUEST_TIMEOUT = 30.0


# -- the registered generation ----------------------------------------------------------------------


def register(tmp: Path) -> str:
    """Two versions of ``bench`` (MLP [256, 256] on (1, 8, 8), 10 classes); champion on v1."""
    from lifelong_mlflow import pyfunc
    from lifelong_models.mlp import MLP, MLPOptions
    from mlflow import MlflowClient

    from lifelong.types import ModelSpec, StreamInfo

    uri = f"sqlite:///{tmp / 'store.db'}"
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    info = StreamInfo(input_shape=(1, 8, 8), num_classes=10, class_names=[str(i) for i in range(10)])
    spec = ModelSpec("mlp", {"hidden": [256, 256], "activation": "relu", "dropout": 0.0}, info)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = MLP(MLPOptions(hidden=[256, 256]), info)
        pyfunc.save(tmp / f"v{seed + 1}", model.state_dict(), spec, [f"mlflow=={__import__('mlflow').__version__}"])
        client.create_model_version(NAME, str(tmp / f"v{seed + 1}"))
    client.set_registered_model_alias(NAME, "champion", "1")
    return uri


# -- servers ----------------------------------------------------------------------------------------


class Server:
    """A server subprocess in its own process group; stopped with SIGTERM (SIGKILL if it hangs)."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str, log: Path, env: dict[str, str]):
        self.name, self.port, self.log = name, port, log
        self.process = subprocess.Popen(
            command, cwd=log.parent, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


# -- closed-loop load -------------------------------------------------------------------------------


async def _client(port: int, path: str, body: bytes, stop_at: float, record: list, versions: bool) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < stop_at:
            sent = time.perf_counter()
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                payload = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                record.append((sent, time.perf_counter() - sent, f"{type(exc).__name__}", None))
                return
            version = json.loads(payload).get("version") if versions and status == 200 else None
            record.append((sent, time.perf_counter() - sent, status, version))
    finally:
        writer.close()


async def _load(port: int, path: str, body: bytes, clients: int, seconds: float, versions: bool) -> list:
    record: list = []
    stop_at = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(*(_client(port, path, body, stop_at, record, versions) for _ in range(clients)))
    return record


def load(port: int, path: str, body: bytes, clients: int, seconds: float, versions: bool = False) -> list:
    """(sent at, latency s, status, version) of every request of a closed loop of ``clients``."""
    return asyncio.run(_load(port, path, body, clients, seconds, versions))


def summarize(record: list, seconds: float) -> dict[str, Any]:
    ok = [latency for _, latency, status, _ in record if status == 200]
    failures = len(record) - len(ok)
    if not ok:
        return {"requests": len(record), "failures": failures}
    quantiles = np.quantile(np.array(ok) * 1000, [0.5, 0.99])
    return {
        "requests": len(record),
        "failures": failures,
        "requests_per_second": len(ok) / seconds,
        "p50_ms": float(quantiles[0]),
        "p99_ms": float(quantiles[1]),
        "max_ms": float(max(ok) * 1000),
    }


# -- the bench --------------------------------------------------------------------------------------


def sample_body() -> tuple[bytes, bytes]:
    """The same image for both servers, as nested lists (1, 8, 8): MLflow's and lifelong's bodies."""
    from sklearn.datasets import load_digits

    image = (load_digits().images[0] / 16.0).astype(np.float32)[None].tolist()
    return json.dumps({"inputs": [image]}).encode(), json.dumps({"instances": [image]}).encode()


def measure(servers: dict[str, tuple[Server, str, bytes]], clients: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    """Every (server, clients) point ``rounds`` times, alternating servers within each round, so a
    change in the machine's background load hits both alike; the median round is reported."""
    points: dict[str, dict[str, list]] = {name: {str(c): [] for c in clients} for name in servers}
    for round_ in range(rounds):
        for c in clients:
            for name, (server, path, body) in servers.items():
                load(server.port, path, body, c, 1.0)  # warm-up: connections, first batches, caches
                point = summarize(load(server.port, path, body, c, seconds), seconds)
                points[name][str(c)].append(point)
                print(f"  round {round_ + 1}: {name} {c:>2} clients: {point}", flush=True)
    out: dict[str, Any] = {}
    for name, by_clients in points.items():
        out[name] = {}
        for c, runs in by_clients.items():
            ranked = sorted(runs, key=lambda r: r.get("requests_per_second", 0))
            median = dict(ranked[len(ranked) // 2])
            median["rounds"] = runs
            median["requests_per_second_range"] = [ranked[0].get("requests_per_second", 0), ranked[-1].get("requests_per_second", 0)]
            out[name][c] = median
    return out


def hot_swap(server: Server, body: bytes, uri: str, clients: int, seconds: float) -> dict[str, Any]:
    """Move champion v1 -> v2 a third into the load and back two thirds in; p99 around each swap."""
    import threading

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    moves: list[tuple[float, str]] = []

    def mover() -> None:
        for fraction, version in ((1 / 3, "2"), (2 / 3, "1")):
            time.sleep(max(0.0, started + seconds * fraction - time.perf_counter()))
            moves.append((time.perf_counter(), version))
            client.set_registered_model_alias(NAME, "champion", version)

    started = time.perf_counter()
    thread = threading.Thread(target=mover)
    thread.start()
    record = load(server.port, "/predict", body, clients, seconds, versions=True)
    thread.join(timeout=60)
    windows = []
    for moved_at, version in moves:
        answered = [sent + latency for sent, latency, status, v in record if v == version and sent >= moved_at]
        swapped_at = min(answered) if answered else None
        end = (swapped_at or moved_at) + 1.0
        inside = [r for r in record if r[0] + r[1] >= moved_at and r[0] <= end]
        windows.append(
            {
                "to_version": version,
                "swap_seconds_after_move": None if swapped_at is None else swapped_at - moved_at,
                **summarize(inside, end - moved_at),
            }
        )
    versions = sorted({v for *_, v in record if v})
    return {"clients": clients, "seconds": seconds, "overall": summarize(record, seconds), "windows": windows, "versions_served": versions}


def markdown(result: dict[str, Any]) -> list[str]:
    meta, runs = result["meta"], result["runs"]
    lines = [
        "# Serving: lifelong serve against mlflow models serve",
        "",
        (
            f"Command: `{meta['command']}` at commit {meta['commit']}; torch {meta['torch']}, mlflow {meta['mlflow']}, "
            f"{meta['cpu_count']} CPUs, OMP_NUM_THREADS={meta['omp_threads']}; every point {meta['rounds']} times "
            f"({meta['seconds']} s after a 1 s warm-up, servers alternating), the median round shown (its p50/p99); "
            f"load average at the end {meta['load_average_at_end']}."
        ),
        "",
        "| server | clients | requests/s (median) | range over rounds | p50 ms | p99 ms | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server in ("mlflow models serve", "lifelong serve"):
        for clients, row in runs[server].items():
            low, high = row["requests_per_second_range"]
            lines.append(
                f"| {server} | {clients} | {row.get('requests_per_second', 0):,.0f} | {low:,.0f}–{high:,.0f} | "
                f"{row.get('p50_ms', float('nan')):.2f} | {row.get('p99_ms', float('nan')):.2f} | {row['failures']} |"
            )
    ratio = result["ratio_at_max_clients"]
    lines += [
        "",
        (
            f"At {ratio['clients']} clients lifelong serve answers {ratio['throughput_ratio']:.1f}× mlflow's requests/s "
            f"with a p99 of {ratio['lifelong_p99_ms']:.1f} ms against {ratio['mlflow_p99_ms']:.1f} ms "
            f"(target ≥ {TARGET_RATIO:.0f}× at no worse p99: **{'met' if ratio['target_met'] else 'not met'}**)."
        ),
        "",
    ]
    swap = result["hot_swap"]
    lines += [
        (
            f"Hot swap under {swap['clients']} clients ({swap['seconds']} s, champion moved twice; versions served: "
            f"{', '.join(swap['versions_served'])}): {swap['overall']['failures']} failed requests of "
            f"{swap['overall']['requests']}."
        ),
        "",
        "| window | requests | failures | p50 ms | p99 ms | max ms | swap after move |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    steady = runs["lifelong serve"][str(swap["clients"])]
    lines.append(
        f"| steady state ({swap['clients']} clients) | {steady['requests']} | {steady['failures']} | {steady['p50_ms']:.2f} | "
        f"{steady['p99_ms']:.2f} | {steady['max_ms']:.2f} | – |"
    )
    for w in swap["windows"]:
        after = "never" if w["swap_seconds_after_move"] is None else f"{w['swap_seconds_after_move']:.2f} s"
        lines.append(
            f"| move to v{w['to_version']} → 1 s after the swap | {w['requests']} | {w['failures']} | "
            f"{w.get('p50_ms', float('nan')):.2f} | {w.get('p99_ms', float('nan')):.2f} | {w.get('max_ms', float('nan')):.2f} | {after} |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help="measurements of every point (the median is reported)")
    parser.add_argument("--swap-seconds", type=float, default=6.0)
    parser.add_argument("--poll-seconds", type=float, default=0.5, help="lifelong serve's alias poll")
    parser.add_argument("--name", default="serving")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers this bench started are stopped by their finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    command = ("OMP_NUM_THREADS=1 python bench/serving.py " + " ".join(sys.argv[1:])).strip()
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    started = time.monotonic()
    mlflow_body, lifelong_body = sample_body()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        uri = register(tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        mlflow_port, lifelong_port = free_port(), free_port()
        mlflow_cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
                      "--host", "127.0.0.1", "-p", str(mlflow_port)]
        lifelong_cmd = [sys.executable, "-m", "lifelong.cli", "serve", f"models:/{NAME}@champion", "--tracking-uri", uri,
                        "--port", str(lifelong_port), "--poll-seconds", str(args.poll_seconds), "--log-level", "warning"]
        started_servers: list[Server] = []
        try:
            mlflow_server = Server("mlflow models serve", mlflow_cmd, mlflow_port, "/ping", tmp / "mlflow.log", env)
            started_servers.append(mlflow_server)
            lifelong_server = Server("lifelong serve", lifelong_cmd, lifelong_port, "/ready", tmp / "lifelong.log", env)
            started_servers.append(lifelong_server)
            servers = {
                "mlflow models serve": (mlflow_server, "/invocations", mlflow_body),
                "lifelong serve": (lifelong_server, "/predict", lifelong_body),
            }
            for name, (server, path, body) in servers.items():  # both answer the same class
                request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    result.setdefault("sample_answers", {})[name] = json.loads(answer.read())
            print(f"  answers: {result['sample_answers']}", flush=True)
            result["runs"] = measure(servers, args.clients, args.seconds, args.rounds)
            result["hot_swap"] = hot_swap(lifelong_server, lifelong_body, uri, max(args.clients), args.swap_seconds)
            print(f"  hot swap: {result['hot_swap']}", flush=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{lifelong_port}/metrics", timeout=10) as answer:
                metrics = answer.read().decode()
            result["lifelong_batch_metrics"] = [line for line in metrics.splitlines() if line.startswith("lifelong_serve_batch_requests_")]
        finally:
            exits = {server.name: server.stop() for server in started_servers}
    top = str(max(args.clients))
    mlflow_top, lifelong_top = result["runs"]["mlflow models serve"][top], result["runs"]["lifelong serve"][top]
    ratio = lifelong_top["requests_per_second"] / mlflow_top["requests_per_second"]
    result["ratio_at_max_clients"] = {
        "clients": int(top),
        "throughput_ratio": ratio,
        "lifelong_p99_ms": lifelong_top["p99_ms"],
        "mlflow_p99_ms": mlflow_top["p99_ms"],
        "target_met": ratio >= TARGET_RATIO and lifelong_top["p99_ms"] <= mlflow_top["p99_ms"],
    }
    result["meta"] = {
        **provenance(command, commit_at_start, source_at_start),
        "mlflow": __import__("mlflow").__version__,
        "python": platform.python_version(),
        "seconds": args.seconds,
        "clients": args.clients,
        "poll_seconds": args.poll_seconds,
        "rounds": args.rounds,
        "server_exit_status": exits,
        "bench_seconds": time.monotonic() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    lines = markdown(result)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["hot_swap"]["overall"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
