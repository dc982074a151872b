"""Bench-only tracker plugins that watch a `lifelong run` process from inside (load with ``--plugin bench_probes``).

Both are trackers, so they may be added to a resumed session (``tracking.*`` may differ on
``--resume``) and they change nothing the run computes: they only read.

- ``record-log`` (``tracking.record-log.dir``): one line per optimizer step, appended with an
  unbuffered ``os.write`` so it survives ``kill -9``: the stream step the step belongs to, whether it
  is the first pass over the batch, the batch's reader position, and an 8-byte BLAKE2b hash of every
  sample (x bytes + label). One file per process (``<pid>.log``), opened with a header line giving the
  stream step the process started from (``run.session.step``). ``bench/faults.py`` counts records
  lost and trained twice from these files.
- ``rss-log`` (``tracking.rss-log.path``): at every ``on_metrics`` call (every ``learner.log_every``
  batches, and at boundaries), one line with the time, step, samples seen, VmRSS and VmHWM of the
  process (``/proc/self/status``) and the live generation count. With ``census_at`` (sample counts),
  the first call at or past each count also writes the number of live Python objects per type
  (``gc.get_objects()``), so ``bench/memory.py`` can say what grew.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lifelong import hookimpl

__version__ = "0.1.0"


def sample_hashes(batch) -> list[str]:
    x = batch.x.detach().cpu().contiguous().numpy()
    y = batch.y.detach().cpu().numpy()
    rows = x.reshape(len(x), -1)
    return [
        hashlib.blake2b(rows[i].tobytes() + int(y[i]).to_bytes(8, "little"), digest_size=8).hexdigest()
        for i in range(len(rows))
    ]


@dataclass
class RecordLogOptions:
    dir: str = field(default="", metadata={"help": "directory of the per-process logs"})


class RecordLog:
    def __init__(self, options: RecordLogOptions):
        self.dir = Path(options.dir)
        self.fd: int | None = None
        self.step = 0

    def _write(self, entry: dict) -> None:
        os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    @hookimpl
    def on_run_start(self, run) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step = int(run.session.step)
        self.fd = os.open(self.dir / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._write({"pid": os.getpid(), "start": self.step, "resumed": bool(run.session.resumed), "t": time.time()})

    @hookimpl
    def after_step(self, batch, outputs, first_pass) -> None:
        if first_pass:
            self.step += 1
            step = self.step
        else:  # extra epochs run at the boundary that precedes the next stream batch
            step = self.step + 1
        position = batch.position.get("record") if isinstance(batch.position, dict) else None
        self._write({"s": step, "f": bool(first_pass), "p": position, "h": sample_hashes(batch)})

    @hookimpl
    def on_run_end(self, summary) -> None:
        if self.fd is not None:
            self._write({"end": True})
            os.close(self.fd)
            self.fd = None


@dataclass
class RssLogOptions:
    path: str = field(default="", metadata={"help": "JSONL file the samples are appended to"})
    census_at: list[int] = field(
        default_factory=list, metadata={"help": "samples_seen at which to count live objects per type"}
    )
    trace: bool = field(
        default=False, metadata={"help": "also run tracemalloc and write the top allocation sites at each census"}
    )


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in KiB, and its thread count."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


class RssLog:
    def __init__(self, options: RssLogOptions):
        self.path = Path(options.path)
        self.census = sorted(options.census_at)
        self.trace = options.trace
        self.snapshots = []
        self.generations = 0
        self.start = time.perf_counter()
        self.f = None

    @hookimpl
    def on_run_start(self, run) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", buffering=1)  # noqa: SIM115 - open from on_run_start to on_run_end
        self.start = time.perf_counter()
        if self.trace:
            import tracemalloc

            tracemalloc.start(25)

    @hookimpl
    def on_generation(self, generation) -> None:
        self.generations += 1

    @hookimpl
    def on_metrics(self, step: int, metrics: dict) -> None:
        if "samples_seen" not in metrics:  # eval metrics at a boundary: the next log call has the counters
            return
        samples = int(metrics["samples_seen"])
        entry = {
            "t": time.perf_counter() - self.start,
            "mono": time.monotonic(),
            "step": step,
            "samples": samples,
            "generations": self.generations,
            **proc_status(),
        }
        if self.census and samples >= self.census[0]:
            while self.census and samples >= self.census[0]:
                self.census.pop(0)
            # Measured above, before the census allocates anything.
            gc.collect()
            objects = gc.get_objects()
            entry["gc_objects"] = len(objects)
            entry["census"] = dict(Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects))
            del objects
            if self.trace:
                import tracemalloc

                snapshot = tracemalloc.take_snapshot()
                entry["traced_bytes"] = tracemalloc.get_traced_memory()[0]
                if self.snapshots:
                    diff = snapshot.compare_to(self.snapshots[0], "traceback")
                    entry["trace_total_diff"] = sum(d.size_diff for d in diff)
                    entry["trace_count_diff"] = sum(d.count_diff for d in diff)
                    entry["trace_top"] = [
                        {
                            "size_diff": d.size_diff,
                            "count_diff": d.count_diff,
                            "size": d.size,
                            "traceback": d.traceback.format(),
                        }
                        for d in diff[:25]
                    ]
                self.snapshots.append(snapshot)
        self.f.write(json.dumps(entry) + "\n")

    @hookimpl
    def on_run_end(self, summary) -> None:
        if self.f is not None:
            self.f.write(
                json.dumps(
                    {"t": time.perf_counter() - self.start, "mono": time.monotonic(), "end": True, **proc_status()}
                )
                + "\n"
            )
            self.f.close()
            self.f = None


@hookimpl
def register_trackers(register):
    register(
        "record-log", RecordLog, options=RecordLogOptions, help="bench: log every optimizer step's samples (faults.py)"
    )
    register(
        "rss-log", RssLog, options=RssLogOptions, help="bench: log the process RSS at every metrics call (memory.py)"
    )
