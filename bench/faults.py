"""Faults and checkpoint cost: `kill -9` a real `lifelong run` many times, resume it, and compare.

**Part 1, fault injection on the CLI.** The built-in pipeline (class-incremental Split-Digits, 5
experiences, replay + EWC on an MLP) with ``learner.epochs`` passes per experience (default 20, so
the run is long enough to be killed many times) and a checkpoint every ``--every-batches`` stream
batches (default 5; ``checkpoint.keep=2``). The MLflow tracker is off here (``tracking.trackers``
holds only the bench's ``record-log`` tracker from ``bench/bench_probes.py``, which appends every
optimizer step's sample hashes to a per-process file and changes nothing the run computes).

1. One uninterrupted reference run with ``--summary``.
2. One interrupted session: ``--kills`` (default 20) times, a fresh ``lifelong run … [--resume]``
   process (its own process group, ``start_new_session``) is sent SIGKILL (to the group) at a random
   point of training, then resumed with ``--resume``; after the last kill the resume runs to the end.
   The kill points are seeded uniform draws over the reference run's optimizer steps (after the first
   checkpoint, so there is always one to resume from): the harness follows the process's progress
   in its record log (polling every 2 ms) and kills it as soon as its global step reaches the next
   point, so every kill lands in training, spread over the whole run (stream batches, the extra
   epochs at boundaries, evaluation and checkpoint writes that follow them).

Reported: resumes, kills that landed (SIGKILL exit), steps redone (trained by a killed process after
its last checkpoint, then rolled back), records lost and trained twice, leftover partial checkpoint
files, and whether the result is bit-identical to the reference (final weights of
``checkpoint.latest(dir).model_state`` with ``torch.equal``, also the optimizer and strategy
tensors; accuracy matrix; generations' index/parent/experiences/samples/offsets; samples_seen;
trained_samples). Records lost / trained twice come three ways: the summary's counters against the
reference; the final weights (bit-identical weights and counts: none lost, none twice); and per
record, from the record logs: the steps each process *committed* (those at or before the checkpoint
the next process resumed from) concatenated in order must equal the reference's steps, sample by
sample (hash multiset differences give the counts).

**Part 2, the cost of checkpointing.** In-process, the same pipeline on Split-Fashion-MNIST
(60,000 training samples, 1,875 batches of 32, 1 epoch, replay + EWC, MLP [256, 256]) with the
MLflow tracker ON into a warm sqlite store, as users run it: ``checkpoint.every_batches=50`` against
no checkpoint directory, alternating (ABBA) over ``--repeats`` pairs after one warm-up run.
Reported: medians of the summary's ``samples_per_second`` (trained samples per second of training
time), of wall time (``Runner.execute``), the ratio, and what a checkpoint costs the training
thread (the state copy) and the writer thread. Target: checkpointing every 50 batches costs ≤ 5 %
of samples/s.

    OMP_NUM_THREADS=1 python bench/faults.py [--kills 20] [--every-batches 5] [--epochs 20] [--seed 0]
                                             [--repeats 5] [--skip-faults] [--skip-cost]

Writes bench/results/faults.{json,md} and docs/img/faults.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
from common import git_commit, provenance, save_figure, source_fingerprint

from lifelong import checkpoint, config, pipeline
from lifelong.host import PluginHost

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
IMAGES = ROOT / "docs" / "img"
TARGET_COST = 0.05
PROCESS_TIMEOUT = 600.0  # seconds any one lifelong process may take before the bench gives up on it
COMPARED = ("index", "parent", "experiences", "experiences_covered", "samples", "offsets")


# -- part 1: kill -9 and resume ------------------------------------------------------------------------
def session_args(directory: Path, logs: Path, every_batches: int, epochs: int) -> list[str]:
    sets = [
        "learner.progress=false",
        f"learner.epochs={epochs}",
        'tracking.trackers=["record-log"]',
        f"tracking.record-log.dir='{logs}'",
        f"checkpoint.every_batches={every_batches}",
        "checkpoint.keep=2",
        f"checkpoint.dir='{directory}'",
    ]
    return [arg for s in sets for arg in ("--set", s)]


class Process:
    """One `lifelong run` in its own process group; output to files; killed as a group."""

    live: ClassVar[list[Process]] = []

    def __init__(self, args: list[str], cwd: Path, name: str):
        self.out, self.err = cwd / f"{name}.out", cwd / f"{name}.err"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
        }
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "lifelong.cli", "--plugin", "bench_probes", *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.started = time.monotonic()
        Process.live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=60)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"{self.popen.args} did not finish in {timeout:.0f} s; killed. stderr:\n{self.err.read_text()[-3000:]}"
            )

    @classmethod
    def kill_all(cls) -> None:
        for p in cls.live:
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def read_log(path: Path) -> tuple[dict | None, list[dict], bool]:
    """Header, step lines and whether the run ended, from one record log (a torn last line is ignored)."""
    header, steps, ended = None, [], False
    if not path.exists():
        return header, steps, ended
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "pid" in entry:
            header = entry
        elif entry.get("end"):
            ended = True
        else:
            steps.append(entry)
    return header, steps, ended


class Follower:
    """Counts the step lines of a growing record log without re-reading it."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lines, self.start = path, 0, 0, None
        self._tail = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self._tail + data
        *complete, self._tail = data.split(b"\n")
        for line in complete:
            if self.start is None and line.startswith(b'{"pid"'):
                self.start = json.loads(line)["start"]
            elif line.startswith(b'{"s"'):
                self.lines += 1


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary entries a killed checkpoint write left behind (never cleaned up by the kernel)."""
    found = [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.is_dir() else []
    store = directory / checkpoint.TESTSETS
    found += (
        [f"{checkpoint.TESTSETS}/{p.name}" for p in store.iterdir() if p.name.startswith(".")] if store.is_dir() else []
    )
    return sorted(found)


def comparable(summary: dict) -> dict:
    return {
        "accuracy_matrix": summary["accuracy_matrix"],
        "initial_accuracy": summary["initial_accuracy"],
        "samples_seen": summary["samples_seen"],
        "trained_samples": summary["trained_samples"],
        "prequential_accuracy": summary["prequential_accuracy"],
        "generations": [{k: g[k] for k in COMPARED} for g in summary["generations"]],
    }


def tensors_of(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensors_of(v, f"{prefix}/{k}"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(tensors_of(v, f"{prefix}/{i}"))
    return out


def faults(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    # The reference: one uninterrupted run.
    ref_logs = tmp / "ref-logs"
    start = time.monotonic()
    ref = Process(
        [
            "run",
            *session_args(tmp / "ref", ref_logs, args.every_batches, args.epochs),
            "--summary",
            str(tmp / "ref.json"),
        ],
        tmp,
        "ref",
    )
    if ref.wait(PROCESS_TIMEOUT) != 0:
        raise RuntimeError(f"reference run failed:\n{ref.err.read_text()[-3000:]}")
    reference_wall = time.monotonic() - start
    (ref_log,) = list(ref_logs.glob("*.log"))
    _, ref_steps, _ = read_log(ref_log)
    total = len(ref_steps)

    def base(
        stream_step: int,
    ) -> int:  # reference steps at or before a checkpoint taken after stream batch `stream_step`
        return sum(1 for s in ref_steps if s["s"] <= stream_step)

    first_checkpoint = base(args.every_batches)
    rng = random.Random(args.seed)
    targets = sorted(rng.randint(first_checkpoint + 1, total - 1) for _ in range(args.kills))

    # The interrupted session.
    directory, logs = tmp / "killed", tmp / "killed-logs"
    common_args = [
        "run",
        *session_args(directory, logs, args.every_batches, args.epochs),
        "--summary",
        str(tmp / "killed.json"),
    ]
    processes: list[dict[str, Any]] = []
    session_start = time.monotonic()
    final_rc = None
    for attempt in range(args.kills + 1):
        target = targets[attempt] if attempt < len(targets) else None
        proc = Process([*common_args, *(["--resume"] if attempt else [])], tmp, f"killed-{attempt:02d}")
        follower = Follower(logs / f"{proc.pid}.log")
        record: dict[str, Any] = {"attempt": attempt, "pid": proc.pid, "target": target}
        killed_at = None
        while proc.popen.poll() is None:
            if time.monotonic() - proc.started > PROCESS_TIMEOUT:
                proc.kill()
                raise RuntimeError(f"attempt {attempt} ran past {PROCESS_TIMEOUT:.0f} s")
            if target is not None:
                follower.poll()
                if follower.start is not None and checkpoint.checkpoints(directory):
                    position = base(follower.start) + follower.lines
                    if position >= target:
                        killed_at = time.monotonic() - proc.started
                        os.killpg(proc.pid, signal.SIGKILL)
                        break
            time.sleep(0.002)
        rc = proc.wait(120)
        header, steps, _ended = read_log(logs / f"{proc.pid}.log")
        err = proc.err.read_text()
        record.update(
            rc=rc,
            landed=rc == -signal.SIGKILL,
            seconds=round(time.monotonic() - proc.started, 2),
            killed_after_s=None if killed_at is None else round(killed_at, 3),
            start_step=header["start"] if header else None,
            steps_logged=len(steps),
            global_at_kill=(base(header["start"]) + len(steps)) if header else None,
            last_step=steps[-1]["s"] if steps else None,
            last_first_pass=steps[-1]["f"] if steps else None,
            checkpoints_after=[p.name for p in checkpoint.checkpoints(directory)],
            leftovers_after=leftovers(directory),
            skipped_corrupt=err.count("skipping checkpoint"),
            resumed_line=next((line for line in err.splitlines() if "resumed session" in line), None),
        )
        processes.append(record)
        print(
            json.dumps(
                {
                    k: record[k]
                    for k in ("attempt", "rc", "target", "global_at_kill", "start_step", "last_step", "seconds")
                }
            ),
            flush=True,
        )
        if not record["landed"]:
            final_rc = rc
            if rc != 0:
                raise RuntimeError(f"attempt {attempt} exited {rc}:\n{err[-3000:]}")
            break
    session_wall = time.monotonic() - session_start

    # Bit-identity.
    expected = json.loads((tmp / "ref.json").read_text())
    actual = json.loads((tmp / "killed.json").read_text())
    exp_c, act_c = comparable(expected), comparable(actual)
    fields = {key: exp_c[key] == act_c[key] for key in exp_c}
    ref_snapshot, killed_snapshot = checkpoint.latest(tmp / "ref"), checkpoint.latest(directory)
    weights = {k: torch.equal(v, killed_snapshot.model_state[k]) for k, v in ref_snapshot.model_state.items()}
    weights_keys_equal = ref_snapshot.model_state.keys() == killed_snapshot.model_state.keys()
    other = {}
    for part in ("optimizer", "strategies"):
        a, b = tensors_of(ref_snapshot.state[part]), tensors_of(killed_snapshot.state[part])
        other[part] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Records, per sample, from the record logs.
    runs = [read_log(logs / f"{p['pid']}.log") for p in processes]
    committed: list[dict] = []
    redone = 0
    for i, (header, steps, _) in enumerate(runs):
        if i + 1 < len(runs):
            next_header, next_steps, _ = runs[i + 1]
            # The next process resumed after stream batch `start`; one that trained nothing resumed from the
            # final checkpoint (after the last boundary), so everything this one did was kept.
            keep = [s for s in steps if s["s"] <= next_header["start"]] if next_steps else steps
        else:
            keep = steps
        committed += keep
        redone += len(steps) - len(keep)
    # A span restored from a checkpoint carries no reader positions, so extra-epoch steps compare by samples only.
    key = lambda s: (s["s"], s["f"], s["p"] if s["f"] else None, tuple(s["h"]))
    same_sequence = [key(s) for s in committed] == [key(s) for s in ref_steps]
    ref_first = Counter(h for s in ref_steps if s["f"] for h in s["h"])
    got_first = Counter(h for s in committed if s["f"] for h in s["h"])
    ref_all = Counter(h for s in ref_steps for h in s["h"])
    got_all = Counter(h for s in committed for h in s["h"])
    records = {
        "stream_records_reference": sum(ref_first.values()),
        "stream_records_committed": sum(got_first.values()),
        "records_lost": sum((ref_first - got_first).values()),
        "records_trained_twice": sum((got_first - ref_first).values()),
        "presentations_reference": sum(ref_all.values()),
        "presentations_committed": sum(got_all.values()),
        "presentations_lost": sum((ref_all - got_all).values()),
        "presentations_extra": sum((got_all - ref_all).values()),
        "committed_sequence_equals_reference": same_sequence,
        "steps_reference": total,
        "steps_logged_all_processes": sum(len(r[1]) for r in runs),
        "steps_redone_after_rollback": redone,
    }
    kills = [p for p in processes if p["landed"]]
    result = {
        "reference_wall_seconds": reference_wall,
        "session_wall_seconds": session_wall,
        "processes": processes,
        "kill_targets": targets,
        "kills_sent": sum(1 for p in processes if p["killed_after_s"] is not None),
        "kills_landed": len(kills),
        "kills_in_first_pass": sum(1 for p in kills if p["last_first_pass"]),
        "kills_in_boundary_epochs": sum(1 for p in kills if p["last_first_pass"] is False),
        "resumes": len(processes) - 1,
        "final_rc": final_rc,
        "fields_equal": fields,
        "weights_keys_equal": weights_keys_equal,
        "weights_equal": all(weights.values()) and weights_keys_equal,
        "weights_differing": [k for k, v in weights.items() if not v],
        "optimizer_equal": other["optimizer"],
        "strategies_equal": other["strategies"],
        "samples_seen": [expected["samples_seen"], actual["samples_seen"]],
        "trained_samples": [expected["trained_samples"], actual["trained_samples"]],
        "records": records,
        "leftover_partial_files": leftovers(directory),
        "corrupt_checkpoints_skipped": sum(p["skipped_corrupt"] for p in processes),
        "reference_summary": {
            k: expected[k] for k in ("acc", "bwt", "samples_per_second", "training_seconds", "wall_seconds")
        },
    }
    result["bit_identical"] = (
        all(fields.values()) and result["weights_equal"] and other["optimizer"] and other["strategies"]
    )
    # one session id across every process of the interrupted session (the reference is another session)
    result["one_session"] = (
        len({g["session"] for g in actual["generations"]}) == 1
        and actual["generations"][0]["session"] == actual["session"]
    )
    return result


# -- part 2: the cost of checkpointing -----------------------------------------------------------------
COST_PIPELINE = [
    "stream.reader='split-fashion-mnist'",
    "learner.epochs=1",
    "learner.progress=false",
]


class CheckpointProbe:
    """Times the state copy on the training thread and checkpoint.write on the writer thread."""

    def __init__(self, runner: pipeline.Runner):
        self.state_s: list[float] = []
        self.write_s: list[float] = []
        self.write_cpu_s: list[float] = []  # the writer thread's own CPU time in checkpoint.write
        self.bytes: list[int] = []
        self.largest: tuple[int, dict] | None = None  # (bytes, state) of the largest checkpoint, for diagnose()
        original_state = runner._state

        def timed_state():
            t = time.perf_counter()
            try:
                return original_state()
            finally:
                self.state_s.append(time.perf_counter() - t)

        runner._state = timed_state
        self._write = checkpoint.write

        def timed_write(*a, **k):
            t, cpu = time.perf_counter(), time.thread_time()
            path = self._write(*a, **k)
            self.write_s.append(time.perf_counter() - t)
            self.write_cpu_s.append(time.thread_time() - cpu)
            size = sum(f.stat().st_size for f in path.iterdir())
            self.bytes.append(size)
            if self.largest is None or size > self.largest[0]:
                self.largest = (size, a[3])  # write(directory, step, session, state, test_sets, keep)
            return path

        checkpoint.write = timed_write

    def close(self) -> None:
        checkpoint.write = self._write


def cpu_counters() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process) so far."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal (idle and iowait excluded)
    times = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), times.user + times.system


def cost_run(host: PluginHost, tmp: Path, uri: str, every: int | None, tag: str) -> dict[str, Any]:
    overrides = [*COST_PIPELINE, f"tracking.mlflow.tracking_uri='{uri}'"]
    if every:
        overrides += [f"checkpoint.every_batches={every}", f"checkpoint.dir='{tmp / ('ckpt-' + tag)}'"]
    plan = pipeline.build(host, config.load(None, overrides), tmp / "dead.jsonl")
    runner = pipeline.Runner(plan)
    probe = CheckpointProbe(runner)
    try:
        busy0, own0 = cpu_counters()
        start = time.perf_counter()
        summary = runner.execute()
        wall = time.perf_counter() - start
        busy1, own1 = cpu_counters()
    finally:
        probe.close()
    tracked = summary["trackers"].get("mlflow", {})
    if tracked.get("errors"):
        raise RuntimeError("MLflow logging failed:\n" + "\n".join(tracked["errors"]))
    if every:
        shutil.rmtree(tmp / ("ckpt-" + tag), ignore_errors=True)
    return {
        "checkpointing": bool(every),
        # cores kept busy by other processes during the run (the machine's busy CPU time minus this process's)
        "other_cores": max(0.0, (busy1 - busy0) - (own1 - own0)) / wall,
        "own_cores": (own1 - own0) / wall,
        "samples_per_second": summary["samples_per_second"],
        "training_seconds": summary["training_seconds"],
        "wall_seconds": wall,
        "summary_wall_seconds": summary["wall_seconds"],
        "trained_samples": summary["trained_samples"],
        "generations": len(summary["generations"]),
        "checkpoints": runner.checkpoints_written,
        "state_copy_ms": [s * 1000 for s in probe.state_s],
        "write_ms": [s * 1000 for s in probe.write_s],
        "write_cpu_ms": [s * 1000 for s in probe.write_cpu_s],
        "checkpoint_bytes": probe.bytes,
        "backpressure_seconds": tracked.get("backpressure_seconds"),
        "acc": summary["acc"],
        "_largest_state": probe.largest[1] if probe.largest else None,
    }


def diagnose(state: dict[str, Any], tmp: Path, seconds: float = 3.0) -> dict[str, Any]:
    """Where a checkpoint write's time goes, and how much each part slows a training loop on another thread.

    Parts of writing ``state`` (the run's largest checkpoint state) run alone: wall and thread CPU ms,
    median of 10. Then a training loop of the same shape (MLP 784-256-256-10, Adam, 64 samples per
    step like replay's doubled batch) runs for ``seconds`` on the main thread while a background
    thread repeats one part back to back (the worst case: the real writer is busy only part of the
    time); the loss of steps/s against no background work says how much of that part competes with
    training (GIL held, or CPU on 2 shared cores). ``safetensors.torch.save`` into one bytes object
    (then SHA-256 and write + fsync) is how the kernel wrote checkpoints before commit 1de13d8, kept
    here for comparison with the kernel's current writer.
    """
    import hashlib
    import threading

    from safetensors.torch import save as save_tensors

    tensors: dict[str, torch.Tensor] = {}
    checkpoint.split_tensors(state, "", tensors)
    target = tmp / "diagnose"
    target.mkdir(exist_ok=True)

    def library_save():  # the former path: one bytes object built under the GIL, hashed, written
        data = save_tensors({k: v.contiguous() for k, v in tensors.items()})
        digest = hashlib.sha256(data).hexdigest()
        with open(target / "library.safetensors", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return digest

    parts = {
        "split_tensors + json": lambda: json.dumps(checkpoint.split_tensors(state, "", {}), allow_nan=True).encode()
    }
    parts["safetensors.torch.save + sha256 + write + fsync (before 1de13d8)"] = library_save
    if hasattr(checkpoint, "write_safetensors"):
        parts["checkpoint.write_safetensors (now: piece by piece, hashed on the way, fsync)"] = lambda: (
            checkpoint.write_safetensors(target / "pieces.safetensors", tensors)
        )
    parts["whole checkpoint.write (now)"] = lambda: checkpoint.write(target / "ck", 1, "s", state, {}, 1)
    alone = {}
    for name, fn in parts.items():
        walls, cpus = [], []
        for _ in range(10):
            w, c = time.perf_counter(), time.thread_time()
            fn()
            walls.append((time.perf_counter() - w) * 1000)
            cpus.append((time.thread_time() - c) * 1000)
        alone[name] = {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus)}

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))

    def steps_per_second() -> float:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += 1
        return n / seconds

    def with_background(fn) -> float:
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                fn()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            return steps_per_second()
        finally:
            stop.set()
            thread.join(timeout=60)

    steps_per_second()  # warm-up
    quiet = [steps_per_second()]
    interference = {}
    for name in list(parts)[1:]:
        interference[name] = with_background(parts[name])
        quiet.append(steps_per_second())
    base = statistics.median(quiet)
    shutil.rmtree(target, ignore_errors=True)
    return {
        "checkpoint_mb": sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6,
        "alone": alone,
        "steps_per_second_quiet": quiet,
        "slowdown_under_continuous_background": {k: 1 - v / base for k, v in interference.items()},
    }


def cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cwd = os.getcwd()
    os.chdir(tmp)  # MLflow's artifact root (./mlruns) lands in the temporary directory
    try:
        host = PluginHost()
        uri = "sqlite:///" + str(tmp / "mlflow.db")
        warm = cost_run(host, tmp, uri, None, "warm")  # creates the store; not counted
        warm.pop("_largest_state")
        sample_state = None
        runs: dict[str, list[dict[str, Any]]] = {"none": [], "every50": []}
        for r in range(args.repeats):
            order = ("none", "every50") if r % 2 == 0 else ("every50", "none")  # ABBA against drift
            for name in order:
                row = cost_run(host, tmp, uri, args.cost_every if name == "every50" else None, f"{r}")
                largest = row.pop("_largest_state")
                if largest is not None:
                    sample_state = largest
                runs[name].append(row)
                print(
                    json.dumps(
                        {
                            "repeat": r,
                            "config": name,
                            **{
                                k: row[k]
                                for k in (
                                    "samples_per_second",
                                    "wall_seconds",
                                    "checkpoints",
                                    "other_cores",
                                    "own_cores",
                                )
                            },
                        }
                    ),
                    flush=True,
                )
        diagnosis = diagnose(sample_state, tmp) if sample_state is not None else None
    finally:
        os.chdir(cwd)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    none, ck = runs["none"], runs["every50"]
    pair_ratio = [c["samples_per_second"] / n["samples_per_second"] for n, c in zip(none, ck)]
    wall_ratio = [c["wall_seconds"] / n["wall_seconds"] for n, c in zip(none, ck)]
    sps_ratio = med(ck, "samples_per_second") / med(none, "samples_per_second")
    state_ms = [ms for r in ck for ms in r["state_copy_ms"]]
    write_ms = [ms for r in ck for ms in r["write_ms"]]
    write_cpu_ms = [ms for r in ck for ms in r["write_cpu_ms"]]
    return {
        "pipeline": "split-fashion-mnist class-IL, 60,000 samples, 1,875 batches of 32, 1 epoch; replay + EWC; MLP [256, 256]; MLflow tracker into a warm sqlite store",
        "every_batches": args.cost_every,
        "repeats": args.repeats,
        "warm_up": warm,
        "runs": runs,
        "sps_none_median": med(none, "samples_per_second"),
        "sps_every50_median": med(ck, "samples_per_second"),
        "sps_ratio_of_medians": sps_ratio,
        "sps_ratio_pairs_median": statistics.median(pair_ratio),
        "sps_ratio_pairs": pair_ratio,
        "other_cores_pairs": [max(n["other_cores"], c["other_cores"]) for n, c in zip(none, ck)],
        "wall_none_median": med(none, "wall_seconds"),
        "wall_every50_median": med(ck, "wall_seconds"),
        "wall_ratio_pairs_median": statistics.median(wall_ratio),
        "training_seconds_none_median": med(none, "training_seconds"),
        "training_seconds_every50_median": med(ck, "training_seconds"),
        "checkpoints_per_run": statistics.median(r["checkpoints"] for r in ck),
        "checkpoint_mb_median": statistics.median(b for r in ck for b in r["checkpoint_bytes"]) / 1e6,
        "state_copy_ms_p50": statistics.median(state_ms),
        "state_copy_ms_max": max(state_ms),
        "write_ms_p50": statistics.median(write_ms),
        "write_ms_max": max(write_ms),
        "write_cpu_ms_p50": statistics.median(write_cpu_ms),
        "writer_cpu_share_of_training": statistics.median(
            sum(r["write_cpu_ms"]) / 1000 / r["training_seconds"] for r in ck
        ),
        "state_copy_share_of_training": statistics.median(
            sum(r["state_copy_ms"]) / 1000 / r["training_seconds"] for r in ck
        ),
        "diagnosis": diagnosis,
        "cost": 1 - sps_ratio,
        "target": TARGET_COST,
        "met": 1 - sps_ratio <= TARGET_COST,
    }


# -- output ----------------------------------------------------------------------------------------------
def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("faults", "cost") if result.get(k)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "faults":
            f = result["faults"]
            total = f["records"]["steps_reference"]
            for i, p in enumerate(f["processes"]):
                if p["global_at_kill"] is None:
                    continue
                start = p["global_at_kill"] - p["steps_logged"]
                end = p["global_at_kill"] if p["landed"] else total
                ax.plot([start, end], [i, i], color="#2c7fb8" if p["landed"] else "#31a354", lw=3)
                if p["landed"]:
                    ax.plot(end, i, "x", color="#c0392b")
            ax.set_xlim(0, total)
            ax.invert_yaxis()
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("optimizer step of the run (reference numbering)")
            ax.set_ylabel("process (0 = first; each after a kill resumes)")
            ax.set_title(f"{f['kills_landed']} × kill -9 and resume: bit-identical = {f['bit_identical']}", fontsize=10)
            ax.grid(alpha=0.3)
        else:
            c = result["cost"]
            for x, (name, label) in enumerate(
                (("none", "no checkpoints"), ("every50", f"every {c['every_batches']} batches"))
            ):
                values = [r["samples_per_second"] for r in c["runs"][name]]
                ax.scatter([x] * len(values), values, alpha=0.7)
                ax.hlines(statistics.median(values), x - 0.2, x + 0.2, color="black")
            ax.set_xticks([0, 1], ["no checkpoints", f"every {c['every_batches']} batches"])
            ax.set_ylabel("samples/s (training time)")
            ax.set_title(
                f"checkpoint cost {c['cost'] * 100:.1f} % of samples/s (target ≤ {TARGET_COST * 100:.0f} %)",
                fontsize=10,
            )
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def markdown(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    lines = [
        f"Sessions under faults and the cost of checkpointing; commit {meta['commit']}"
        + (f" (at the start: {meta['commit_at_start']})" if meta["commit_at_start"] != meta["commit"] else "")
        + f", lifelong/ + plugins/ sources {meta['source_fingerprint'][0]}"
        + (
            f" → {meta['source_fingerprint'][1]} (**the code changed during the run**)"
            if meta["code_changed_during_run"]
            else " (unchanged during the run)"
        )
        + f", {meta['cpu_count']} shared CPUs, "
        f"torch {meta['torch']}, OMP_NUM_THREADS={meta['omp_threads']}.",
        f"Command: `{meta['command']}`",
        "",
    ]
    f = result.get("faults")
    if f:
        r = f["records"]
        yes = lambda b: "yes" if b else "NO"
        lines += [
            (
                f"**Kill -9 and resume** (built-in Split-Digits pipeline, replay + EWC, `learner.epochs={meta['epochs']}`, "
                f"`checkpoint.every_batches={meta['every_batches']}`, `checkpoint.keep=2`, MLflow off: `tracking.trackers` = the "
                f"bench's `record-log` only; seed {meta['seed']}):"
            ),
            "",
            "| | |",
            "| --- | --- |",
            (
                f"| kills sent / landed (SIGKILL exit) | {f['kills_sent']} / {f['kills_landed']} "
                f"({f['kills_in_first_pass']} during stream batches, {f['kills_in_boundary_epochs']} during the extra epochs at boundaries) |"
            ),
            f"| resumes | {f['resumes']} (final exit status {f['final_rc']}) |",
            f"| one session across all processes | {yes(f['one_session'])} |",
            (
                f"| samples_seen / trained_samples, reference vs killed | {f['samples_seen'][0]} / {f['trained_samples'][0]} vs "
                f"{f['samples_seen'][1]} / {f['trained_samples'][1]} |"
            ),
            (
                f"| records lost / trained twice (per record, from the step logs) | {r['records_lost']} / {r['records_trained_twice']} "
                f"of {r['stream_records_reference']} |"
            ),
            (
                f"| presentations lost / extra (all {meta['epochs']} epochs) | {r['presentations_lost']} / {r['presentations_extra']} "
                f"of {r['presentations_reference']} |"
            ),
            f"| committed steps equal the reference's, in order, sample by sample | {yes(r['committed_sequence_equals_reference'])} |",
            (
                f"| steps redone (trained after the last checkpoint by a killed process, rolled back) | {r['steps_redone_after_rollback']} "
                f"(of {r['steps_logged_all_processes']} logged; the run has {r['steps_reference']}) |"
            ),
            f"| final weights bit-identical (`torch.equal`, every tensor) | {yes(f['weights_equal'])} |",
            f"| optimizer / strategy tensors bit-identical | {yes(f['optimizer_equal'])} / {yes(f['strategies_equal'])} |",
            "| accuracy matrix, initial accuracy, prequential accuracy, generations (index/parent/experiences/samples/offsets) equal | "
            + ", ".join(f"{k}: {yes(v)}" for k, v in f["fields_equal"].items())
            + " |",
            f"| **bit-identical overall** | **{yes(f['bit_identical'])}** |",
            f"| corrupt checkpoints skipped on resume | {f['corrupt_checkpoints_skipped']} |",
            f"| partial checkpoint files left in the directory | {len(f['leftover_partial_files'])}"
            + (
                f": {', '.join(f['leftover_partial_files'][:6])}{' …' if len(f['leftover_partial_files']) > 6 else ''}"
                if f["leftover_partial_files"]
                else ""
            )
            + " |",
            f"| wall time: reference / interrupted session | {f['reference_wall_seconds']:.1f} s / {f['session_wall_seconds']:.1f} s |",
            "",
        ]
    c = result.get("cost")
    if c:
        lines += [
            f"**Checkpoint cost** ({c['pipeline']}); {c['repeats']} alternating (ABBA) pairs after a warm-up run, medians:",
            "",
            "| | no checkpoints | every 50 batches | ratio |",
            "| --- | --- | --- | --- |",
            (
                f"| samples/s (summary, training time) | {c['sps_none_median']:.0f} | {c['sps_every50_median']:.0f} | "
                f"{c['sps_ratio_of_medians']:.3f} (pairs: median {c['sps_ratio_pairs_median']:.3f}, "
                f"{min(c['sps_ratio_pairs']):.3f}–{max(c['sps_ratio_pairs']):.3f}) |"
            ),
            f"| training seconds | {c['training_seconds_none_median']:.2f} | {c['training_seconds_every50_median']:.2f} | |",
            (
                f"| wall seconds (execute: training, evaluation, MLflow drain, final checkpoint) | {c['wall_none_median']:.2f} | "
                f"{c['wall_every50_median']:.2f} | {c['wall_ratio_pairs_median']:.3f} |"
            ),
            "",
            (
                f"Checkpoints per run: {c['checkpoints_per_run']:.0f} ({c['checkpoint_mb_median']:.1f} MB each, plus the "
                f"held-out sets once); state copy on the training thread p50 {c['state_copy_ms_p50']:.1f} ms (max "
                f"{c['state_copy_ms_max']:.1f}); serialise + checksum + fsync on the writer thread p50 {c['write_ms_p50']:.0f} ms "
                f"(max {c['write_ms_max']:.0f}), of which the writer's own CPU time p50 {c['write_cpu_ms_p50']:.0f} ms. "
                f"Per run the state copies add up to {c['state_copy_share_of_training'] * 100:.1f} % of the training time "
                f"(on the training thread) and the writer's CPU time to {c['writer_cpu_share_of_training'] * 100:.1f} % "
                "(on another thread, competing for the 2 shared cores and the GIL with training, the reader and the MLflow writer)."
            ),
            "",
            *diagnosis_lines(c.get("diagnosis")),
            "Per pair (ABBA order): samples/s ratio, and the most cores other processes kept busy during either run of the pair:",
            "",
            "| pair | " + " | ".join(str(i) for i in range(len(c["sps_ratio_pairs"]))) + " |",
            "| --- |" + " --- |" * len(c["sps_ratio_pairs"]),
            "| ratio | " + " | ".join(f"{v:.3f}" for v in c["sps_ratio_pairs"]) + " |",
            "| other processes, cores | " + " | ".join(f"{v:.2f}" for v in c.get("other_cores_pairs", [])) + " |",
            "",
            (
                f"Cost: **{c['cost'] * 100:.1f} %** of samples/s; target ≤ {c['target'] * 100:.0f} %: "
                f"**{'met' if c['met'] else 'missed'}**."
            ),
            "",
        ]
    lines += [
        f"Load average (1, 5, 15 min) at the end: {meta['load_average_at_end']}.",
        "",
        f"![faults](../../docs/img/{meta['name']}.png)",
    ]
    return lines


def diagnosis_lines(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    lines = [
        (
            f"Where a checkpoint's time goes ({d['checkpoint_mb']:.1f} MB of tensors, the run's largest; each part alone, median "
            "of 10) and how much each part, repeated back to back on a background thread, slows a training loop of the same "
            f"shape on the main thread (quiet: {statistics.median(d['steps_per_second_quiet']):.0f} steps/s):"
        ),
        "",
        "| part | wall ms | thread CPU ms | training slowdown, continuous background |",
        "| --- | --- | --- | --- |",
    ]
    slow = d["slowdown_under_continuous_background"]
    for name, a in d["alone"].items():
        s = f"{slow[name] * 100:.0f} %" if name in slow else "–"
        lines.append(f"| {name} | {a['wall_ms']:.1f} | {a['cpu_ms']:.1f} | {s} |")
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--every-batches", type=int, default=5, help="checkpoint.every_batches of the fault runs")
    parser.add_argument("--epochs", type=int, default=20, help="learner.epochs of the fault runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs of the cost part")
    parser.add_argument("--cost-every", type=int, default=50, help="checkpoint.every_batches of the cost part")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--name", default="faults")
    args = parser.parse_args()
    command = ("OMP_NUM_THREADS=1 python bench/faults.py " + " ".join(sys.argv[1:])).strip()
    result: dict[str, Any] = {}
    started = time.monotonic()
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp_name:
            tmp = Path(tmp_name)
            if not args.skip_faults:
                (tmp / "faults").mkdir()
                result["faults"] = faults(args, tmp / "faults")
            if not args.skip_cost:
                (tmp / "cost").mkdir()
                result["cost"] = cost(args, tmp / "cost")
    finally:
        Process.kill_all()
    result["meta"] = {
        **provenance(command, commit_at_start, source_at_start),
        "mlflow": __import__("mlflow").__version__ if not args.skip_cost else None,
        "epochs": args.epochs,
        "every_batches": args.every_batches,
        "seed": args.seed,
        "kills": args.kills,
        "name": args.name,
        "bench_seconds": time.monotonic() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    figure(result, IMAGES / f"{args.name}.png")
    lines = markdown(result)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = not result.get("faults") or result["faults"]["bit_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
