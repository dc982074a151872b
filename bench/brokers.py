"""Broker readers: throughput against a file, and exactly once under `kill -9` (issue 14).

**Part 1, throughput.** The same records — scikit-learn's digits (64 features in [0, 1], labels 0-9)
repeated to ``--records`` rows — fed to the same pipeline (naive, MLP [256, 256], Adam, tracking
off) three ways: from an ``npz`` file, from a Kafka topic (Tansu, 3 partitions, JSON messages) and
from a Redis stream (JSON in the entry field ``data``), at batch 32 and 256, alternating the sources
over ``--repeats`` rounds, in-process (``pipeline.Runner``). The broker readers run in their own
process (``reader_process``, the default); with ``--thread`` each broker is also measured with its
reader on the kernel's reader thread (``reader_process = false``), in the same rounds. The figure is the **steady-state
training rate**: trained samples per second between the first and the last periodic ``on_metrics`` call
(about 20 over a run), from the bench's ``rss-log`` tracker (``bench/bench_probes.py``), so it leaves
out what only a broker run has at its ends — the consumer-group join before the first batch and the
``idle_timeout`` wait after the last one (the summary's ``samples_per_second`` counts that wait as
training time). Reported: medians and the ratio broker ÷ npz (target ≥ 0.9). Also the raw rate of
each reader alone: records/s decoded and consumed by iterating the reader (no training), between
its first and last batch.

**Part 2, exactly once under faults.** For each broker, the 20-point fault bench of
``bench/faults.py`` over a broker: a ``lifelong run`` consuming digits records (the record key as a
65th feature, plus unlabeled and invalid records; the ``key-log`` strategy of
``tests/fixtures/key_log.py``) is killed with SIGKILL (its process group) at ``--kills`` seeded random
points of training, each time after a checkpoint exists, and resumed with ``--resume`` until a
process drains the stream (``idle_timeout``). Judged as in ``tests/plugins/test_broker_exactly_once.py``:
the final checkpoint's ``key-log`` state (the training history of the final model's lineage) must
hold every valid key once and nothing else; the dead-letter file every invalid record once; on the
broker, every offset committed (Kafka: the group's committed offset = the partition's end) / every
entry acknowledged (Redis: nothing pending). Also counted: records trained after a checkpoint by a
process that was then killed (redone after the resume), partial checkpoint files left behind
(``faults.leftovers``). Target: 20/20 kills landed, 0 lost, 0 duplicated.

    OMP_NUM_THREADS=1 python bench/brokers.py [--records 20000] [--repeats 3] [--kills 20] [--seed 0]
                                              [--quick] [--skip-throughput] [--skip-faults] [--only kafka|redis]
                                              [--thread]

``--quick``: 10,000 records, 1 repeat, 5 kills (a smoke run, ~3 min). Writes bench/results/brokers.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import git_commit, provenance, source_fingerprint
from faults import leftovers

from lifelong import config, pipeline
from lifelong.host import PluginHost

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# After site-packages, so the installed distribution's entry points win over a stale egg-info in the root.
sys.path.append(str(ROOT))

from tests.fixtures.broker_session import (
    CLASSES,
    as_messages,
    digits_stream,
    pipeline_toml,
    run_with_kills,
    verdict,
)
from tests.fixtures.kafka_broker import (
    committed_offsets,
    create_topic,
    end_offsets,
    kafka_broker_process,
    produce,
)
from tests.fixtures.redis_server import pending_count, redis_server_process, xadd

TARGET_RATIO = 0.9
BATCHES = (32, 256)
SOURCES = ("npz", "kafka", "redis", "kafka-thread", "redis-thread")  # -thread: reader_process = false (--thread)


# -- part 1: throughput ----------------------------------------------------------------------------------
def digits_rows(records: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    index = np.arange(records) % len(x)
    return np.round(x[index], 4), digits.target[index].astype(np.int64)


def stream_section(source: str, where: dict[str, Any], run: int) -> dict[str, Any]:
    """The ``[stream]`` section of one run; broker runs read from the start, each in a fresh consumer group."""
    if source == "npz":
        return {"reader": "npz", "path": str(where["npz"]), "scenario": "class"}
    thread = source.endswith("-thread")  # the reader on the kernel's reader thread, not in its own process
    source = source.removesuffix("-thread")
    common = {
        "format": "json",
        "features_field": "x",
        "num_features": 64,
        "classes": CLASSES,
        "scenario": "class",
        "batch_timeout": 0.5,
        "idle_timeout": 2.0,
        "group": f"bench-{run}",
        **({"reader_process": False} if thread else {}),
    }
    if source == "kafka":
        return {"reader": "kafka", "bootstrap": where["kafka"], "topics": ["digits"], **common}
    return {"reader": "redis", "url": where["redis"], "stream": "digits", **common}


def toml_table(name: str, values: dict[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), ""]


def log_every(records: int, batch: int) -> int:
    """Batches between metrics calls: about 20 points over the run, the same for every source."""
    return max(1, records // batch // 20)


def steady_rate(log: Path, every: int) -> tuple[float, int]:
    """Samples/s between the first and the last periodic on_metrics line of an rss-log, and the samples between.

    Only the lines at multiples of ``every`` batches, each step once: the kernel also logs once after
    the stream ended (after the reader's ``idle_timeout`` wait), which is no training.
    """
    seen: dict[int, dict] = {}
    for entry in map(json.loads, log.read_text().splitlines()):
        if "samples" in entry and entry["step"] % every == 0 and entry["step"] not in seen:
            seen[entry["step"]] = entry
    first, last = seen[min(seen)], seen[max(seen)]
    samples = last["samples"] - first["samples"]
    return samples / (last["t"] - first["t"]), samples


def train_run(
    host: PluginHost, source: str, batch: int, where: dict[str, Any], tmp: Path, run: int, records: int
) -> dict[str, Any]:
    log = tmp / f"rss-{run}.jsonl"
    path = tmp / f"pipeline-{run}.toml"
    path.write_text(
        "\n".join(
            [
                *toml_table("stream", stream_section(source, where, run)),
                *toml_table("model", {"name": "mlp", "hidden": [256, 256]}),
                *toml_table(
                    "learner",
                    {
                        "strategies": ["naive"],
                        "epochs": 1,
                        "batch_size": batch,
                        "device": "cpu",
                        "progress": False,
                        "log_every": log_every(records, batch),
                    },
                ),
                *toml_table("boundary", {"detector": "experience-change"}),
                *toml_table("tracking", {"trackers": ["rss-log"]}),
                *toml_table("tracking.rss-log", {"path": str(log)}),
                # required by the broker readers (commit after a durable checkpoint); written at the end only
                *toml_table("checkpoint", {"dir": str(tmp / f"checkpoints-{run}")}),
            ]
        )
    )
    raw = config.load(path)
    plan = pipeline.build(host, raw, tmp / f"dead-{run}.jsonl")
    started = time.perf_counter()
    summary = pipeline.Runner(plan).execute()
    wall = time.perf_counter() - started
    rate, samples = steady_rate(log, log_every(records, batch))
    return {
        "source": source,
        "batch_size": batch,
        "steady_samples_per_second": rate,
        "steady_samples": samples,
        "summary_samples_per_second": summary["samples_per_second"],
        "trained_samples": summary["trained_samples"],
        "dead_letters": summary["dead_letters"]["count"],
        "wall_seconds": wall,
    }


def raw_reader_rate(host: PluginHost, source: str, where: dict[str, Any], tmp: Path, run: int) -> dict[str, Any]:
    """Records/s of the reader alone (decode, batch, position), iterated on this thread, batch 256."""
    from lifelong_brokers.kafka import KafkaOptions, kafka_reader
    from lifelong_brokers.redis_reader import RedisOptions, redis_reader

    from lifelong.readers import DeadLetters, ReaderContext

    shared = {
        "features_field": "x",
        "num_features": 64,
        "classes": CLASSES,
        "batch_timeout": 0.5,
        "idle_timeout": 2.0,
        "group": f"raw-{run}",
    }
    context = ReaderContext(batch_size=256, seed=0, dead_letter=DeadLetters(tmp / f"raw-dead-{run}.jsonl"))
    if source == "kafka":
        reader = kafka_reader(KafkaOptions(bootstrap=where["kafka"], topics=["digits"], **shared), context)
    else:
        reader = redis_reader(RedisOptions(url=where["redis"], stream="digits", **shared), context)
    first = last = None
    records = 0
    try:
        for batch in reader:
            now = time.perf_counter()
            if first is None:
                first = now  # the group join is behind us; count from the first batch's end
            elif len(batch) == 256:  # the last, partial batch waits batch_timeout: no reading speed
                records += len(batch)
                last = now
    finally:
        getattr(reader, "close", lambda: None)()
    return {"source": source, "records_per_second": records / (last - first), "records": records}


def throughput(args: argparse.Namespace, tmp: Path, where: dict[str, Any], sources: list[str]) -> dict[str, Any]:
    host = PluginHost(plugins=["bench_probes"])
    runs: list[dict[str, Any]] = []
    counter = 0
    for repeat in range(args.repeats):
        for batch in BATCHES:
            order = sources if repeat % 2 == 0 else list(reversed(sources))  # alternate against drift
            for source in order:
                counter += 1
                row = train_run(host, source, batch, where, tmp, counter, args.records)
                row["repeat"] = repeat
                runs.append(row)
                print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    table: dict[str, dict[str, Any]] = {}
    for batch in BATCHES:
        base = statistics.median(
            r["steady_samples_per_second"] for r in runs if r["source"] == "npz" and r["batch_size"] == batch
        )
        npz = {r["repeat"]: r["steady_samples_per_second"] for r in runs if r["source"] == "npz" and r["batch_size"] == batch}
        for source in sources:
            mine = [r for r in runs if r["source"] == source and r["batch_size"] == batch]
            rates = [r["steady_samples_per_second"] for r in mine]
            table[f"{source}/{batch}"] = {
                "median": statistics.median(rates),
                "ratio_to_npz": statistics.median(rates) / base,
                # each round's ratio to that round's npz run (the runs next to each other): less of the machine's drift
                "round_ratios": [r["steady_samples_per_second"] / npz[r["repeat"]] for r in mine],
                "rates": rates,
            }
    raw = []
    for source in sources:
        if source in ("kafka", "redis"):
            counter += 1
            raw.append(raw_reader_rate(host, source, where, tmp, counter))
            print(json.dumps(raw[-1]), flush=True)
    met = all(v["ratio_to_npz"] >= TARGET_RATIO for k, v in table.items() if k.split("/")[0] in ("kafka", "redis"))
    return {"runs": runs, "table": table, "raw_readers": raw, "target": TARGET_RATIO, "met": met}


# -- part 2: kill -9 and resume over a broker ------------------------------------------------------------
def faults(kind: str, address: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    data = digits_stream(records=args.fault_records, invalid=40, unlabeled=20, seed=args.seed)
    directory, logs = tmp / "checkpoints", tmp / "keys"
    name = "faults"
    if kind == "kafka":
        create_topic(address, name, partitions=3)
        produce(address, name, as_messages(data))
    else:
        xadd(address, name, data.messages)
    path = tmp / "pipeline.toml"
    # idle_timeout above the Kafka session timeout (6 s): a resumed consumer may wait that long for the
    # killed member's partitions
    path.write_text(
        pipeline_toml(kind, address, name, directory, logs, batch_size=16, every_batches=5, idle_timeout=10.0)
    )
    started = time.monotonic()
    processes = run_with_kills(
        path,
        tmp,
        logs,
        directory,
        kills=args.kills,
        total=len(data.valid),
        first=5 * 16 + 1,
        seed=args.seed,
        process_timeout=300,
    )
    wall = time.monotonic() - started
    result = verdict(data, directory, tmp / "dead_letters.jsonl", logs)
    if kind == "kafka":
        committed, ends = committed_offsets(address, "lifelong-test", name), end_offsets(address, name)
        broker = {"committed": committed, "end": ends, "all_committed": committed == ends}
    else:
        pending = pending_count(address, name, "lifelong-test")
        broker = {"pending": pending, "all_committed": pending == 0}
    landed = sum(p["landed"] for p in processes)
    return {
        "broker": kind,
        "records": {"valid": len(data.valid), "unlabeled": len(data.unlabeled), "invalid": len(data.invalid)},
        "kills_sent": sum(p["at_kill"] is not None for p in processes),
        "kills_landed": landed,
        "resumes": len(processes) - 1,
        "final_rc": processes[-1]["rc"],
        "processes": processes,
        "lost": len(result["lost"]),
        "duplicated": len(result["duplicated"]),
        "unexpected": len(result["unexpected"]),
        "dead_letters": result["dead_letters"],
        "dead_missing": len(result["dead_missing"]),
        "dead_duplicated": len(result["dead_duplicated"]),
        "redone": result["redone"],
        "trained_in_lineage": result["trained_in_lineage"],
        "exactly_once": result["exactly_once"],
        "broker_side": broker,
        "leftover_partial_files": leftovers(directory),
        "session_wall_seconds": wall,
        "met": landed == args.kills and result["exactly_once"] and broker["all_committed"],
        "examples": {
            k: result[k][:10] for k in ("lost", "duplicated", "unexpected", "dead_missing", "dead_duplicated")
        },
    }


# -- output ----------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    yes = lambda b: "yes" if b else "NO"
    lines = [
        f"Broker readers; commit {meta['commit']}, lifelong/ + plugins/ sources {meta['source_fingerprint'][0]}"
        + (
            " (**the code changed during the run**)"
            if meta["code_changed_during_run"]
            else " (unchanged during the run)"
        )
        + f", {meta['cpu_count']} shared CPUs, torch {meta['torch']}, OMP_NUM_THREADS={meta['omp_threads']}.",
        f"Command: `{meta['command']}`",
        "",
    ]
    t = result.get("throughput")
    if t:
        lines += [
            (
                f"**Throughput** (digits repeated to {meta['records']:,} records; naive, MLP [256, 256], tracking off; steady-state "
                f"trained samples/s between the first and last metrics call; median of {meta['repeats']}):"
            ),
            "",
            "| source | batch 32 | ratio to npz | per round | batch 256 | ratio to npz | per round |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        rounds = lambda v: "median {:.2f} ({})".format(  # noqa: E731
            statistics.median(v["round_ratios"]), ", ".join(f"{x:.2f}" for x in v["round_ratios"])
        ) if "round_ratios" in v else "–"
        for source in [s for s in SOURCES if f"{s}/32" in t["table"]]:
            a, b = t["table"][f"{source}/32"], t["table"][f"{source}/256"]
            lines.append(
                f"| {source} | {a['median']:.0f} | {a['ratio_to_npz']:.2f} | {rounds(a)} | {b['median']:.0f} | {b['ratio_to_npz']:.2f} | {rounds(b)} |"
            )
        lines += [
            "",
            "Ratio to npz: the source's median ÷ npz's median (the target's figure). Per round: each round's run ÷ "
            "the npz run of the same round, run next to it (the order alternates between rounds).",
        ]
        lines += [""]
        for r in t["raw_readers"]:
            lines.append(
                f"Raw `{r['source']}` reader (decode + consume + batch, no training, batch 256): {r['records_per_second']:,.0f} records/s."
            )
        lines += [
            "",
            f"Target: broker ≥ {TARGET_RATIO}× npz at both batch sizes: **{'met' if t['met'] else 'missed'}**.",
            "",
        ]
    for f in result.get("faults", []):
        lines += [
            (
                f"**Kill -9 and resume over {f['broker']}** ({f['records']['valid']} valid + {f['records']['unlabeled']} unlabeled + "
                f"{f['records']['invalid']} invalid records, batch 16, checkpoint every 5 batches, seed {meta['seed']}):"
            ),
            "",
            "| | |",
            "| --- | --- |",
            f"| kills sent / landed (SIGKILL exit) | {f['kills_sent']} / {f['kills_landed']} |",
            f"| resumes | {f['resumes']} (final exit status {f['final_rc']}) |",
            f"| valid records lost / trained twice / unexpected in the final lineage | {f['lost']} / {f['duplicated']} / {f['unexpected']} (lineage: {f['trained_in_lineage']} of {f['records']['valid']}) |",
            f"| dead letters: written / missing / duplicated | {f['dead_letters']} / {f['dead_missing']} / {f['dead_duplicated']} of {f['records']['invalid']} |",
            f"| broker: everything committed / acknowledged at the end | {yes(f['broker_side']['all_committed'])} |",
            f"| records trained after a checkpoint by a killed process (redone after resume) | {f['redone']} |",
            f"| partial checkpoint files left | {len(f['leftover_partial_files'])} |",
            f"| wall time of the session | {f['session_wall_seconds']:.0f} s |",
            f"| **20-point target (all kills landed, exactly once, all committed)** | **{'met' if f['met'] else 'missed'}** |",
            "",
        ]
    lines.append(f"Load average (1, 5, 15 min) at the end: {meta['load_average_at_end']}.")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="records of the throughput part")
    parser.add_argument("--fault-records", type=int, default=3594, help="valid records of the fault part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["kafka", "redis"], help="one broker only")
    parser.add_argument("--quick", action="store_true", help="10,000 records, 1 repeat, 5 kills, 1,797 fault records")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--thread", action="store_true", help="also each broker with its reader on the kernel's reader thread (reader_process = false)")
    parser.add_argument("--name", default="brokers")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats, args.kills, args.fault_records = 10000, 1, 5, 1797
    command = ("OMP_NUM_THREADS=1 python bench/brokers.py " + " ".join(sys.argv[1:])).strip()
    brokers = [args.only] if args.only else ["kafka", "redis"]
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    started = time.monotonic()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-brokers-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_throughput:
            x, y = digits_rows(args.records)
            where: dict[str, Any] = {"npz": tmp / "digits.npz"}
            np.savez(where["npz"], x=x, y=y)
            records = [{"x": row.tolist(), "label": int(label)} for row, label in zip(x, y)]
            with contextlib.ExitStack() as servers:  # only the brokers measured: --only kafka needs no redis-server
                if "kafka" in brokers:
                    kafka = servers.enter_context(kafka_broker_process(log=tmp / "tansu.log"))
                    where["kafka"] = kafka.bootstrap
                    create_topic(kafka.bootstrap, "digits", partitions=3)
                    produce(kafka.bootstrap, "digits", [{"key": i, **r} for i, r in enumerate(records)], timeout=120)
                if "redis" in brokers:
                    redis = servers.enter_context(redis_server_process(tmp / "redis"))
                    where["redis"] = redis.url
                    xadd(redis.url, "digits", records)
                (tmp / "tp").mkdir()
                threads = [f"{b}-thread" for b in brokers] if args.thread else []
                result["throughput"] = throughput(args, tmp / "tp", where, ["npz", *brokers, *threads])
        if not args.skip_faults:
            result["faults"] = []
            for kind in brokers:
                (tmp / f"faults-{kind}").mkdir()
                if kind == "kafka":
                    with kafka_broker_process(log=tmp / "tansu-faults.log") as server:
                        result["faults"].append(faults(kind, server.bootstrap, args, tmp / f"faults-{kind}"))
                else:
                    with redis_server_process(tmp / "redis-faults") as server:
                        result["faults"].append(faults(kind, server.url, args, tmp / f"faults-{kind}"))
                print(
                    json.dumps({k: v for k, v in result["faults"][-1].items() if k not in ("processes", "examples")}),
                    flush=True,
                )
    result["meta"] = {
        **provenance(command, commit_at_start, source_at_start),
        "records": args.records,
        "fault_records": args.fault_records,
        "repeats": args.repeats,
        "kills": args.kills,
        "seed": args.seed,
        "quick": args.quick,
        "bench_seconds": time.monotonic() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    lines = markdown(result)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all(f["met"] for f in result.get("faults", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
