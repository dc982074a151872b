"""Fuzz the configuration: generated pipelines through the real ``lifelong run`` path (issue 13).

Each case is a pipeline generated from the real option names of the kernel and the built-in
plugins (split-digits, permuted-digits, csv, npz and text readers; mlp and cnn models; every
built-in strategy; the three boundary detectors; checkpoint and promotion sections), with values
of every TOML type: NaN, infinities, huge and negative numbers, huge strings, NUL characters, deep
nesting, wrong types, unknown keys. A quarter of its sections are fuzzed, so that a good share
of the pipelines is valid and runs. A fifth of the cases go through TOML text and ``--set``
overrides (``config.load``), the rest are tables handed to ``pipeline.build``.

Every case runs in a worker process: ``config.load`` + ``pipeline.build`` exactly as ``lifelong
run`` calls them, then, when the build succeeds, a tiny bounded run (trackers off, at most 3
stream batches, at most 2 epochs) with ``pipeline.Runner``. The parent kills a worker that takes
longer than ``--timeout`` seconds on one case (a hang) and starts another; a worker that dies
(a signal, the OOM killer) is a crash. Finally the first ``--cli`` cases run through the command
itself (``python -m lifelong.cli run FILE --set …`` in a subprocess): its exit status must be 0 or
2, with no traceback.

Each worker runs under an address-space limit (``--memory-share`` of the memory available at the
start), so a size that no estimate caught fails its allocation instead of waking the OOM killer on
a shared machine; such a case is reported apart ("sizes no estimate caught").

Reported: crashes (any exception but UserError, at build or run; a dead worker), hangs, accepted
but invalid values (a plan whose resolved pipeline holds a non-finite float, a float beyond
float32, an integer beyond 64 bits, a NUL, a seed outside [0, 2^32), a device that cannot train),
poisoned runs (non-finite weights after a run that ended with exit 0), and the commonest refusals.
Target: 0 crashes, 0 hangs, 0 accepted-invalid, 0 poisoned.

Writes bench/results/fuzz_configs.{json,md}.

    OMP_NUM_THREADS=1 python bench/fuzz_configs.py [--cases 1000] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from common import git_commit, provenance, source_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fixtures: the TOML text the tests write too
from tests.fixtures.toml_text import toml_value  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

READERS = ["split-digits", "permuted-digits", "csv", "npz", "text"]
MODELS = ["mlp", "cnn"]
STRATEGIES = ["naive", "replay", "ewc", "lwf", "l2", "joint", "pathnet", "avalanche"]
DETECTORS = ["experience-change", "window", "loss-drift"]
HUGE_INTS = [2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**20, 10**400, -(2**63) - 1, -(10**30)]
MEDIUM_INTS = [1000, 10_000, 100_000, 1_000_000]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 3.5e38, 1e39, 5e-324, -0.0, 1e-300, 1e30]
NAMES = ["auto", "cpu", "meta", "cuda", "cuda:99", "mps", "relu", "class", "task", "sgd", "nan", "lambda"]
PATHS = ["", ".", "/", "/etc/passwd", "../../etc/passwd", "/dev/null", "/proc/self/mem", "no/such/file.csv", "a" * 300]


class Generator:
    """Values and pipelines from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random, host: Any, files: Path):
        self.rng = rng
        self.host = host
        self.files = files

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def int_(self) -> int:
        r = self.rng.random()
        if r < 0.55:
            return self.rng.randint(1, 8)
        if r < 0.8:
            return self.rng.randint(-3, 70)
        if r < 0.9:
            return self.rng.choice(MEDIUM_INTS)
        return self.rng.choice(HUGE_INTS)

    def float_(self) -> float | int:
        r = self.rng.random()
        if r < 0.45:
            return self.rng.uniform(0.0005, 0.9)
        if r < 0.6:
            return self.rng.uniform(-2, 2)
        if r < 0.8:
            return self.rng.choice(SPECIAL_FLOATS)
        if r < 0.9:
            return self.int_()
        return float(f"{self.rng.choice(['1', '0', '5', '-3'])}e{self.rng.randint(-330, 330)}")  # 1e309 is inf

    def str_(self) -> str:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(NAMES + PATHS)
        if r < 0.7:
            return "".join(chr(self.rng.choice([self.rng.randint(32, 126), self.rng.randint(0, 0x2FFF)])) for _ in range(self.rng.randint(0, 12)))
        if r < 0.85:
            return "x" * self.rng.choice([4097, 100_000, 1_000_000])
        return "a\x00b"

    def scalar(self) -> Any:
        kind = self.rng.choice(["int", "float", "str", "bool", "date"])
        if kind == "date":
            return datetime(1979, 5, 27, 7, 32)
        return {"int": self.int_, "float": self.float_, "str": self.str_, "bool": lambda: self.chance(0.5)}[kind]()

    def any_(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 2 or r < 0.6:
            return self.scalar()
        if r < 0.75:
            return [self.any_(depth + 1) for _ in range(self.rng.randint(0, 4))]
        if r < 0.9:
            return {self.str_()[:8]: self.any_(depth + 1) for _ in range(self.rng.randint(0, 3))}
        value: Any = self.scalar()  # deep nesting
        for i in range(self.rng.choice([20, 100, 5000])):
            value = [value] if i % 2 else {"k": value}
        return value

    def typed(self, tp: Any) -> Any:
        """A value near the option's type (usually), or anything."""
        if self.chance(0.1):
            return self.any_()
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Literal:
            return self.rng.choice(args) if self.chance(0.8) else self.str_()
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            return None if self.chance(0.2) else self.typed(self.rng.choice(options))
        if origin is list:
            n = self.rng.choice([0, 1, 1, 2, 2, 3, 4] + ([1001, 1_000_001] if self.chance(0.05) else []))
            if n > 1000:
                item = self.typed(args[0]) if args else 1
                return [item] * n
            return [self.typed(args[0]) if args else self.any_() for _ in range(n)]
        if origin is dict:
            return {self.str_()[:8]: self.any_(1) for _ in range(self.rng.randint(0, 3))}
        if tp is bool:
            return self.chance(0.5)
        if tp is int:
            return self.int_()
        if tp is float:
            return self.float_()
        if tp is str:
            return self.str_()
        return self.any_()

    def table(self, options: type, fixed: dict | None = None, p: float = 0.25) -> dict:
        """Some of ``options``'s keys with generated values, with probability ``p``; else only ``fixed``."""
        table = dict(fixed or {})
        if not self.chance(p):
            return table
        hints = typing.get_type_hints(options)
        fields = [f for f in dataclasses.fields(options) if f.metadata.get("key", f.name) not in table]
        for f in self.rng.sample(fields, k=min(len(fields), self.rng.randint(1, 3))):
            table[f.metadata.get("key", f.name)] = self.typed(hints[f.name])
        if self.chance(0.1):
            table[self.rng.choice(["bogus", "hiden", "x" * 300])] = self.any_()
        return table

    def schema(self, kind: str, name: str) -> type:
        from lifelong import options as opts

        component = self.host.components[kind].get(name)
        return component.options if component is not None else opts.NoOptions

    def pipeline(self) -> dict[str, Any]:
        from lifelong import config

        rng = self.rng
        reader = rng.choice(READERS) if self.chance(0.97) else "no-such-reader"
        path = {"csv": "s.csv", "npz": "s.npz", "text": "s.jsonl"}.get(reader)
        stream = self.table(self.schema("reader", reader), {"reader": reader, **({"path": str(self.files / path)} if path else {})})
        if reader.endswith("-digits") and self.chance(0.5):
            stream.setdefault("experiences", 2)
        model_name = rng.choice(MODELS) if self.chance(0.97) else "no-such-model"
        model = self.table(self.schema("model", model_name), {"name": model_name})
        strategies = rng.sample(STRATEGIES, k=rng.choice([0, 1, 1, 1, 2]))
        if self.chance(0.03):
            strategies.append("no-such-strategy")
        learner = self.table(config.LearnerOptions)
        learner["progress"] = False
        learner["strategies"] = strategies if self.chance(0.95) else self.any_()
        tables = {name: self.table(self.schema("strategy", name), p=0.5) for name in strategies if self.chance(0.5)}
        detector = rng.choice(DETECTORS)
        boundary = self.table(self.schema("boundary_detector", detector), {"detector": detector})
        raw = {"stream": stream, "model": model, "learner": learner, "strategy": tables, "boundary": boundary,
               "tracking": {"trackers": []}}
        if self.chance(0.25):
            raw["checkpoint"] = self.table(config.CheckpointOptions, p=1.0)
        if self.chance(0.2):
            raw["promotion"] = self.table(config.PromotionOptions, p=1.0)
        if self.chance(0.03):
            raw[rng.choice(["learner", "stream", "strategy", "tracking", "boundary"])] = self.any_()
        if self.chance(0.02):
            raw[self.str_()[:10] or "x"] = {"a": 1}
        return raw


def to_toml(raw: dict[str, Any]) -> tuple[str, list[str]]:
    """A pipeline as TOML text, with the learner's keys moved to ``--set`` overrides (both paths).

    TOML has no null: an option generated as None (``lr = None`` of pathnet) is left out, as a user
    would leave it out.
    """
    raw = {s: ({k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t) for s, t in raw.items()}
    if isinstance(raw.get("strategy"), dict):
        raw["strategy"] = {n: ({k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t)
                           for n, t in raw["strategy"].items()}
    lines, sets = [], []
    for section, table in raw.items():
        if not isinstance(table, dict):
            lines.append(f"{json.dumps(section)} = {toml_value(table)}")
            continue
        if section == "strategy":
            for name, sub in table.items():
                lines.append(f"[strategy.{json.dumps(name)}]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in (sub.items() if isinstance(sub, dict) else [])]
            continue
        if section == "learner":
            sets += [f"learner.{k}={toml_value(v)}" for k, v in table.items()]
            continue
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n", sets


def make_files(root: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["f0,f1,f2,label"] + [f"{a:.3f},{b:.3f},{c:.3f},{i % 3}" for i, (a, b, c) in enumerate(rng.random((90, 3)))]
    (root / "s.csv").write_text("\n".join(rows) + "\n")
    np.savez(root / "s.npz", x=rng.random((90, 4)).astype("float32"), y=np.arange(90) % 3)
    (root / "s.jsonl").write_text("".join(json.dumps({"text": f"text number {i}", "label": str(i % 2)}) + "\n" for i in range(60)))


def audit(plan: Any) -> list[str]:
    """Values a plan that built must not hold (see the module docstring)."""
    from lifelong import config
    from lifelong import options as opts

    problems, stack = [], [("", plan.resolved)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        elif isinstance(node, float) and not (math.isfinite(node) and abs(node) <= opts.FLOAT32_MAX):
            problems.append(f"{where} = {node!r}")
        elif isinstance(node, int) and not isinstance(node, bool) and not opts.INT_MIN <= node <= opts.INT_MAX:
            problems.append(f"{where} = {node}")
        elif isinstance(node, str) and "\x00" in node:
            problems.append(f"{where} holds a NUL")
    if not 0 <= plan.learner.seed < 2**32:
        problems.append(f"learner.seed = {plan.learner.seed}")
    if plan.device.type not in config.DEVICE_TYPES:
        problems.append(f"device {plan.device}")
    return problems


def short(value: Any, limit: int = 300) -> str:
    from lifelong.errors import brief

    return brief(value, limit)


def run_case(index: int, seed: int, host: Any, files: Path, work: Path) -> dict[str, Any]:
    """Generate case ``index`` and take it through build and a tiny run; never raises."""
    import torch

    from lifelong import config, pipeline
    from lifelong.errors import UserError

    started = time.perf_counter()
    try:  # the harness's own part: a failure here is the bench's bug, not lifelong's
        gen = Generator(random.Random(f"{seed}:{index}"), host, files)
        raw = gen.pipeline()
        via_toml = gen.chance(0.2)
        if via_toml:
            text, sets = to_toml(raw)
            path = work / f"case{index}.toml"
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
    except Exception as exc:  # noqa: BLE001
        return {"index": index, "outcome": "harness error", "error": f"{type(exc).__name__}: {exc}"[:300],
                "traceback": traceback.format_exc()[-1500:], "seconds": 0.0}
    result: dict[str, Any] = {"index": index, "via": "toml+set" if via_toml else "table", "config": short(raw, 600)}
    stage = "build"
    try:
        if via_toml:
            loaded = config.load(str(path), sets)
        else:
            loaded = raw
        plan = pipeline.build(host, loaded, work / "dead_letters.jsonl")
        problems = audit(plan)
        if problems:
            result["invalid"] = problems
        stage = "run"
        plan.learner.max_batches = min(plan.learner.max_batches or 3, 3)
        plan.learner.epochs = min(plan.learner.epochs, 2)
        runner = pipeline.Runner(plan)
        summary = runner.execute()
        weights = [t for t in runner.model.state_dict().values() if t.is_floating_point()]
        finite = all(bool(torch.isfinite(t).all()) for t in weights)
        result.update(outcome="ran", samples_seen=summary.get("samples_seen"))
        if not finite:
            result["poisoned"] = "non-finite weights after a run that exited 0"
    except UserError as exc:
        message = str(exc)
        result.update(outcome=f"refused at {stage}", message=message[:300], message_chars=len(message))
    except BaseException as exc:  # noqa: BLE001 - the bench counts exactly these
        result.update(outcome=f"crash at {stage}", error=f"{type(exc).__name__}: {short(str(exc), 300)}",
                      traceback=traceback.format_exc()[-1500:])
    finally:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(False)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def worker(conn: Any, seed: int, files: str, work: str, timeout: float, memory_limit: int) -> None:
    os.chdir(work)  # checkpoint dirs and other relative outputs of generated pipelines land here
    import faulthandler
    import resource

    if memory_limit:  # an allocation beyond it fails (MemoryError) instead of waking the OOM killer on a shared machine
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    import torch

    torch.set_num_threads(1)
    from lifelong.host import PluginHost

    host = PluginHost()
    stacks = open(Path(work) / "stacks.txt", "w")  # where a case that hangs was stuck (read by the parent)
    while True:
        index = conn.recv()
        if index is None:
            return
        stacks.seek(0)
        stacks.truncate()
        faulthandler.dump_traceback_later(max(timeout - 3, 1), file=stacks)
        result = run_case(index, seed, host, Path(files), Path(work))
        faulthandler.cancel_dump_traceback_later()
        conn.send(result)


def stuck_in(work: Path) -> str:
    """The innermost lifelong frames of a hung worker's stack dump, e.g. ``benchmarks.py:145 permuted_stream``."""
    try:
        text = (work / "stacks.txt").read_text()
    except OSError:
        return ""
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', text)
    ours = [f"{Path(f).parent.name}/{Path(f).name}:{line} {fn}" for f, line, fn in frames if "/site-packages/" not in f and "fuzz_configs" not in f]
    return " < ".join(ours[:3])


class Pool:
    """Workers fed one case at a time; a case past the timeout kills its worker (a hang)."""

    def __init__(self, n: int, seed: int, files: Path, work: Path, timeout: float, memory_limit: int):
        self.ctx = mp.get_context("fork")
        self.seed, self.files, self.work, self.timeout, self.memory_limit = seed, files, work, timeout, memory_limit
        self.slots = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> dict[str, Any]:
        parent, child = self.ctx.Pipe()
        work = self.work / f"w{i}-{time.monotonic_ns()}"
        work.mkdir(parents=True)
        process = self.ctx.Process(target=worker, args=(child, self.seed, str(self.files), str(work), self.timeout, self.memory_limit), daemon=True)
        process.start()
        return {"id": i, "conn": parent, "process": process, "case": None, "since": 0.0, "work": work}

    def run(self, cases: list[int], report) -> None:
        todo = list(reversed(cases))
        while todo or any(s["case"] is not None for s in self.slots):
            for k, slot in enumerate(self.slots):
                if slot["case"] is None and todo:
                    slot["case"], slot["since"] = todo.pop(), time.monotonic()
                    slot["conn"].send(slot["case"])
                if slot["case"] is None:
                    continue
                if slot["conn"].poll(0.02):
                    try:
                        report(slot["conn"].recv())
                        slot["case"] = None
                        continue
                    except (EOFError, OSError):
                        pass
                dead = not slot["process"].is_alive()
                if dead or time.monotonic() - slot["since"] > self.timeout:
                    if not dead:
                        slot["process"].kill()
                    slot["process"].join(5)
                    code = slot["process"].exitcode
                    outcome = "hang" if not dead else "crash (worker died)"
                    report({"index": slot["case"], "outcome": outcome, "exitcode": code, "stuck_in": stuck_in(slot["work"]),
                            "config": self.describe(slot["case"]), "seconds": round(time.monotonic() - slot["since"], 1)})
                    self.slots[k] = self._start(slot["id"])

    def describe(self, index: int) -> str:
        """The generated pipeline of case ``index`` (regenerated: the worker that had it is gone)."""
        from lifelong.host import PluginHost

        if not hasattr(self, "_host"):
            self._host = PluginHost()
        try:
            return short(Generator(random.Random(f"{self.seed}:{index}"), self._host, self.files).pipeline(), 600)
        except Exception as exc:  # noqa: BLE001
            return f"<{type(exc).__name__}>"

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
            slot["process"].join(5)
            if slot["process"].is_alive():
                slot["process"].kill()


def cli_cases(indexes: list[int], seed: int, files: Path, work: Path, timeout: float) -> list[dict[str, Any]]:
    """The same generated pipelines through the command itself: exit 0 or 2, never a traceback."""
    from lifelong.host import PluginHost

    host = PluginHost()
    results = []
    for index in indexes:
        gen = Generator(random.Random(f"{seed}:{index}"), host, files)
        raw = gen.pipeline()
        learner = raw.get("learner") if isinstance(raw.get("learner"), dict) else {}
        learner["max_batches"] = 3
        learner["epochs"] = min(learner.get("epochs", 1), 2) if isinstance(learner.get("epochs"), int) else learner.get("epochs", 1)
        text, sets = to_toml(raw)
        path = work / f"cli{index}.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        sets = [s for s in sets if len(s) < 100_000]  # a command-line argument is at most 128 KiB on Linux
        args = [sys.executable, "-m", "lifelong.cli", "run", str(path), "--dead-letters", str(work / "dl.jsonl")]
        for s in sets:
            args += ["--set", s]
        started = time.perf_counter()
        try:
            done = subprocess.run(args, cwd=work, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            rc, out = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            rc, out = "timeout", ""
        results.append({
            "index": index,
            "exit": rc,
            "traceback": "Traceback" in out,
            "seconds": round(time.perf_counter() - started, 2),
            "last_line": out.strip().splitlines()[-1][:300] if out.strip() else "",
        })
    return results


def field_of(message: str) -> str:
    """The field a refusal names: ``learner.lr: …`` → ``learner.lr``; ``learner: lr must …`` → ``learner.lr``."""
    head, _, rest = message.partition(": ")
    head = re.sub(r"\[\d+\]", "[i]", head)
    if " " in head or not rest:
        return "(other)"
    word = rest.split(" ", 1)[0]
    if "." not in head and re.fullmatch(r"[a-z_]+", word) and word not in ("expected", "unknown", "a", "the", "ran"):
        return f"{head}.{word}"
    return head if len(head) < 60 else head[:57] + "..."


def markdown(data: dict[str, Any]) -> str:
    p, s = data["provenance"], data["summary"]
    lines = [
        "# Config fuzzing (issue 13)",
        "",
        f"{data['cases']} generated pipelines (seed {data['seed']}), commit {p['commit']}, lifelong/ + plugins/ sources "
        f"{p['source_fingerprint'][0]} ({'changed' if p['code_changed_during_run'] else 'unchanged'} during the run), "
        f"{p['cpu_count']} shared CPUs, torch {p['torch']}, OMP_NUM_THREADS={p['omp_threads']}, load at the end {p['load_average_at_end']}.",
        f"Command: `{p['command']}`",
        "",
        "| | cases |",
        "| --- | --- |",
        f"| built and ran (≤ 3 batches, ≤ 2 epochs, trackers off) | {s['ran']} |",
        f"| refused at build (UserError, exit 2) | {s['refused at build']} |",
        f"| refused during the run (UserError, exit 2) | {s['refused at run']} |",
        f"| **crashes** (an exception other than UserError, or a dead worker) | **{s['crashes']}** |",
        f"| **hangs** (> {data['timeout']} s on one case) | **{s['hangs']}** |",
        f"| **accepted but invalid** (audit of the resolved pipeline) | **{s['invalid']}** |",
        f"| **poisoned** (non-finite weights after exit 0) | **{s['poisoned']}** |",
        f"| **sizes no estimate caught** (refused by the allocator under the workers' {data['memory_limit_bytes'] / 2**30:.1f} GiB "
        f"address-space limit; without a limit, the OOM killer) | **{s['unestimated']}** |",
        f"| via TOML text + `--set` / via tables | {s['via toml+set']} / {s['via table']} |",
        f"| longest refusal message (characters) | {s['longest message']} |",
        f"| seconds per case: median / max | {s['median seconds']} / {s['max seconds']} |",
        f"| harness errors (the bench's own generator failed: not counted above) | {len(data['harness_errors'])} |",
        "",
        f"Through the command (`python -m lifelong.cli run FILE --set …`, the first {len(data['cli'])} cases): exit statuses "
        f"{dict(collections.Counter(str(c['exit']) for c in data['cli']))}, tracebacks {sum(c['traceback'] for c in data['cli'])}.",
        "",
        "Fields refused most often:",
        "",
        "| field | refusals |",
        "| --- | --- |",
        *[f"| `{k}` | {v} |" for k, v in data["refused_fields"][:25]],
    ]
    for name in ("crashes", "hangs", "invalid", "poisoned", "unestimated"):
        if data[name]:
            lines += ["", f"**{name}**:", ""] + [
                f"- case {c['index']}: {c.get('error') or c.get('message') or c.get('outcome')} {c.get('invalid', '')}"
                + (f" (stuck in `{c['stuck_in']}`)" if c.get("stuck_in") else "")
                + f" — `{c.get('config', '')[:300]}`"
                for c in data[name][:30]
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take before it counts as a hang")
    parser.add_argument("--cli", type=int, default=30, help="cases also run through the command in a subprocess")
    parser.add_argument("--out", default=str(RESULTS / "fuzz_configs"), help="results path without extension")
    parser.add_argument("--memory-share", type=float, default=0.3,
                        help="address-space limit of each worker, as a share of the memory available at the start (0: none)")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 python bench/fuzz_configs.py" + "".join(
        f" {a}" for a in sys.argv[1:]
    )
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fuzz_configs_") as tmp:
        tmp = Path(tmp)
        files = tmp / "files"
        files.mkdir()
        make_files(files)
        from lifelong import resources

        free = resources.available("cpu") or 0
        memory_limit = int(args.memory_share * free) if args.memory_share > 0 else 0
        pool = Pool(args.workers, args.seed, files, tmp / "work", args.timeout, memory_limit)

        def report(result: dict[str, Any]) -> None:
            results[result["index"]] = result
            if len(results) % 50 == 0 or not result.get("outcome", "").startswith(("ran", "refused")):
                bad = {k: v for k, v in result.items() if k in ("outcome", "error", "invalid", "poisoned")}
                print(f"{len(results)}/{args.cases} {time.perf_counter() - started:.0f}s case {result['index']}: {bad}", flush=True)

        try:
            pool.run(list(range(args.cases)), report)
        finally:
            pool.close()
        cli_dir = tmp / "cli"
        cli_dir.mkdir()
        cli = cli_cases(list(range(min(args.cli, args.cases))), args.seed, files, cli_dir, args.timeout)

    ordered = [results[i] for i in sorted(results)]
    outcome = collections.Counter(r["outcome"] for r in ordered)
    crashes = [r for r in ordered if r["outcome"].startswith("crash")]
    harness = [r for r in ordered if r["outcome"] == "harness error"]
    crashes += [{"index": f"cli {c['index']}", "outcome": f"command exit {c['exit']}", "error": c["last_line"]}
                for c in cli if c["exit"] not in (0, 2) or c["traceback"]]
    hangs = [r for r in ordered if r["outcome"] == "hang"]
    invalid = [r for r in ordered if r.get("invalid")]
    poisoned = [r for r in ordered if r.get("poisoned")]
    refusals = collections.Counter(field_of(r["message"]) for r in ordered if r["outcome"].startswith("refused"))
    # refused, but by the allocator, not by an estimate: with no address-space limit this is the OOM killer
    unestimated = [r for r in ordered if r["outcome"].startswith("refused") and "ran out of memory" in r.get("message", "")]
    seconds = sorted(r["seconds"] for r in ordered)
    data = {
        "cases": args.cases,
        "seed": args.seed,
        "timeout": args.timeout,
        "workers": args.workers,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "summary": {
            "ran": outcome["ran"],
            "refused at build": outcome["refused at build"],
            "refused at run": outcome["refused at run"],
            "crashes": len(crashes),
            "hangs": len(hangs),
            "invalid": len(invalid),
            "poisoned": len(poisoned),
            "unestimated": len(unestimated),
            "via toml+set": sum(r.get("via") == "toml+set" for r in ordered),
            "via table": sum(r.get("via") == "table" for r in ordered),
            "longest message": max((r.get("message_chars", 0) for r in ordered), default=0),
            "median seconds": seconds[len(seconds) // 2] if seconds else None,
            "max seconds": seconds[-1] if seconds else None,
        },
        "crashes": crashes,
        "harness_errors": harness,
        "hangs": hangs,
        "invalid": invalid,
        "poisoned": poisoned,
        "unestimated": unestimated,
        "memory_limit_bytes": memory_limit,
        "refused_fields": refusals.most_common(),
        "cli": cli,
        "provenance": provenance(command, commit_at_start, source_at_start),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0 if not (crashes or hangs or invalid or poisoned or harness or unestimated) else 1


if __name__ == "__main__":
    sys.exit(main())
