"""Fuzz the pipeline with hostile input (issue 13): crashes, hangs, lost good records, poisoned generations.

**Part ``records``** (this file: the readers; the configs half, 1,000 generated configs, is
``bench/fuzz_configs.py``, which ``--part configs`` runs with the remaining arguments). For each reader — ``csv``, ``text`` as JSON Lines, ``text`` as CSV
(quoted texts may span lines there), ``npz`` — and each of ``--seeds`` seeds, a file of ``--records``
records (default 10,000) of which ``--fuzz`` (default 20 %) are fuzzed, in 3 experience blocks, is
run through the real ``lifelong run`` CLI in its own process (and process group) under
``--timeout`` seconds: MLflow off, the naive strategy, one epoch, ``test_fraction`` 0 (so every
good record must be *trained*), a small model (``mlp [16]``; for the text reader's bytes, this
module's ``fuzz-bytes`` model, a mean byte embedding), and this module's ``fuzz-tags`` tracker,
loaded with ``--plugin fuzz``. Good records carry a unique tag (feature 0 = 1,000,000 + index; the
text ``good <tag>``); the tracker logs the tags of every first-pass batch, whether each generation's
weights are all finite, and whether the final model's are.

Fuzzed records (chosen uniformly per fuzzed record): values beyond float32 (``1e308``, ``3.5e38``,
``-1e39``, ``1e400``), NaN/inf text, text that is not a number, wrong widths, unterminated and
stray quotes, invalid UTF-8, junk labels (``cat``, ``-1``, ``3.5``, ``99``, empty, NaN), junk
experience ids (``x``, ``-1``, ``1e300``, ``2.5``), random bytes, NUL bytes, 100 kB lines, blank lines
(which are not records); JSON that does not parse, is not an object, nests 100,000 deep, has wrong
types or a 5,000-digit number; in npz, NaN/inf/1e308/3.5e38 values and labels of -1, 200000, 10^12,
2^62 (and 2.5, NaN, 1e300 when the labels are floats).

Reported per case and per reader: the exit status; **crashes** (a status other than 0, or a
traceback); **hangs** (past ``--timeout``); **lost good records** (a tagged record never trained);
records **unaccounted** (``samples_seen + dead letters != records``); **poisoned generations** (a
generation, or the final model, with a non-finite weight); fuzzed records that were valid after all
(``99`` is a class, a random line can parse), dead letters by reason, and wall time. Target: 0
crashes, hangs, lost good records, unaccounted records and poisoned generations.

    OMP_NUM_THREADS=1 python bench/fuzz.py [--part records] [--records 10000] [--seeds 5]
                                           [--readers csv,text-jsonl,text-csv,npz] [--fuzz 0.2] [--timeout 300]

Writes bench/results/fuzz_records.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lifelong import hookimpl

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
GOOD = re.compile(rb"good (\d+)")  # how a good text starts
TAG0 = 1_000_000  # good records' tags: TAG0 + index; a fuzzed record is never tagged this high
READERS = ("csv", "text-jsonl", "text-csv", "npz")
CLASSES = 5
EXPERIENCES = 3


# -- the probe plugin (loaded by the runs with ``--plugin fuzz``) ----------------------------------------


@dataclass
class TagLogOptions:
    path: str = field(default="", metadata={"help": "JSONL file the probe writes"})
    kind: Literal["feature", "text"] = field(default="feature", metadata={"help": "where a record's tag is: feature 0, or the text 'good <tag>'"})


class TagLog:
    """Logs the tags of every first-pass batch and whether generations and the final model are finite."""

    def __init__(self, options: TagLogOptions):
        self.options = options
        self.file = None
        self.model = None

    @hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model
        self.file = open(self.options.path, "a", buffering=1)  # noqa: SIM115 - closed in on_run_end

    @hookimpl
    def after_step(self, batch, outputs, first_pass) -> None:
        if not first_pass:
            return
        x = batch.x.detach().cpu()
        if self.options.kind == "feature":
            tags = [int(v) for v in x.reshape(len(x), -1)[:, 0].double().tolist() if v >= TAG0]
        else:
            found = (GOOD.match(bytes(row)) for row in x.numpy())
            tags = [int(m.group(1)) for m in found if m]
        self.file.write(json.dumps({"n": len(x), "tags": tags}) + "\n")

    @hookimpl
    def on_generation(self, generation) -> None:
        finite = all(bool(torch.isfinite(t).all()) for t in generation.state.values() if t.is_floating_point())
        self.file.write(json.dumps({"generation": generation.index, "finite": finite}) + "\n")

    @hookimpl
    def on_run_end(self, summary) -> None:
        if self.file is not None:
            finite = all(bool(torch.isfinite(p).all()) for p in self.model.state_dict().values() if p.is_floating_point())
            self.file.write(json.dumps({"final_finite": finite}) + "\n")
            self.file.close()
            self.file = None


@dataclass
class BytesOptions:
    dim: int = field(default=16, metadata={"help": "embedding width"})


class BytesBag(nn.Module):
    """The mean embedding of a text's non-zero bytes, then one head per task: a model for the text reader's uint8 rows."""

    def __init__(self, options: BytesOptions, info):
        super().__init__()
        from lifelong_models.heads import TaskHeads

        self.embed = nn.EmbeddingBag(256, options.dim, mode="mean", padding_idx=0)
        self.head = TaskHeads(options.dim, info.num_classes, info.num_tasks)

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x.long()), task)


@hookimpl
def register_trackers(register):
    register("fuzz-tags", TagLog, options=TagLogOptions, help="bench: log trained tags and finiteness (fuzz.py)")


@hookimpl
def register_models(register):
    register("fuzz-bytes", BytesBag, options=BytesOptions, help="bench: mean byte embedding over the text reader's bytes (fuzz.py)")


# -- generated files -------------------------------------------------------------------------------------

HUGE = ["1e308", "3.5e38", "-1e39", "1e400", "-1e400"]
NOT_FINITE = ["nan", "NaN", "inf", "-Infinity"]
NOT_NUMBER = ["x", "", "1e", "--1", "0x10", "∞", "1,5"]
JUNK_LABEL = ["cat", "-1", "3.5", "99", "", "1e3", "nan", "2.0", "03"]
JUNK_EXP = ["x", "-1", "1e300", "2.5", "", "inf"]


@dataclass
class Stream:
    path: Path
    records: int  # what the reader must account for: trained + dead-lettered
    good: list[int]  # tags
    fuzzed: int
    kinds: Counter


def _experience(i: int, n: int) -> int:
    return i * EXPERIENCES // n


def _random_line(rng: random.Random, quotes: bool) -> bytes:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).replace(b"\n", b" ")
    return data if quotes else data.replace(b'"', b"'")


def csv_stream(path: Path, n: int, fuzz: float, seed: int) -> Stream:
    rng = random.Random(seed)
    lines, good, kinds, records = [b"tag,f1,f2,f3,label,exp"], [], Counter(), 0
    for i in range(n):
        label, exp = rng.randrange(CLASSES), _experience(i, n)
        fields = [str(TAG0 + i), *(f"{label + rng.gauss(0, 1):.4f}" for _ in range(3)), str(label), str(exp)]
        if rng.random() >= fuzz:
            lines.append(",".join(fields).encode())
            good.append(TAG0 + i)
            records += 1
            continue
        kind = rng.choice(["huge", "nonfinite", "number", "width", "quote", "utf8", "label", "exp", "bytes", "nul", "long", "crlf", "blank"])
        kinds[kind] += 1
        fields[0] = "-1"
        if kind in ("huge", "nonfinite", "number"):
            fields[rng.randrange(1, 4)] = rng.choice({"huge": HUGE, "nonfinite": NOT_FINITE, "number": NOT_NUMBER}[kind])
        elif kind == "width":
            fields = fields[: rng.randrange(6)] if rng.random() < 0.5 else fields + ["1"] * rng.randrange(1, 4)
        elif kind == "quote":
            fields[rng.randrange(6)] = rng.choice(['"', '"1', '"1.5', '1"2', '"1"x', '""', '"a,b', '"0.5'])
        elif kind == "label":
            fields[4] = rng.choice(JUNK_LABEL)
        elif kind == "exp":
            fields[5] = rng.choice(JUNK_EXP)
        elif kind == "nul":
            fields[rng.randrange(6)] += "\x00"
        elif kind == "long":
            fields[rng.randrange(1, 4)] = "1" * 100_000
        line = ",".join(fields).encode()
        if kind == "utf8":
            at = rng.randrange(len(line) + 1)
            line = line[:at] + rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\x80"]) + line[at:]
        elif kind == "bytes":
            line = _random_line(rng, quotes=True)
        elif kind == "crlf":
            line += b"\r"
        elif kind == "blank":
            line = rng.choice([b"", b"\r"])
        lines.append(line)
        records += 1 if line.strip(b"\r") else 0
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Stream(path, records, good, sum(kinds.values()), kinds)


def text_stream(path: Path, n: int, fuzz: float, seed: int, csv_format: bool) -> Stream:
    rng = random.Random(seed)
    lines, good, kinds, records = [b"id,text,label,exp"] if csv_format else [], [], Counter(), 0
    for i in range(n):
        tag, label, exp = TAG0 + i, rng.randrange(CLASSES), _experience(i, n)
        if rng.random() >= fuzz:
            if csv_format:
                text = rng.choice([f"good {tag} plain", f'"good {tag}, with a comma"', f'"good {tag} ""quoted"""', f'"good {tag}\nsecond line"'])
                lines.append(f"{i},{text},{label},{exp}".encode())
            else:
                lines.append(json.dumps({"text": f"good {tag}", "label": rng.choice([label, str(label)]), "exp": exp}).encode())
            good.append(tag)
            records += 1
            continue
        kind = rng.choice(["label", "exp", "utf8", "broken", "stray", "bytes", "blank", "nested", "types", "bigint", "nul"])
        kinds[kind] += 1
        junk_label = rng.choice(JUNK_LABEL)
        if csv_format:
            line = {
                "label": f"{i},text,{junk_label},{exp}",
                "exp": f"{i},text,{label},{rng.choice(JUNK_EXP)}",
                "utf8": f"{i},caf\udce9,{label},{exp}",
                "broken": rng.choice([f"{i},only three,{label}", f'{i},"a,b,c",1,2,3', f"{i},,{label},{exp}"]),
                "stray": rng.choice([f'{i},"stray text,{label},{exp}', f'{i},text,"{label},{exp}', f'{i},text,{label},"{exp}']),
                "nested": f"{i},{'[' * 1000},{label},{exp}",
                "types": f"{i},   ,{label},{exp}",
                "bigint": f"{i},text,{'9' * 5000},{exp}",
                "nul": f"{i},te\x00xt,{label},{exp}",
            }.get(kind, "")
        else:
            line = {
                "label": json.dumps({"text": "t", "label": rng.choice([junk_label, None, True, [1], -5, 2.5]), "exp": exp}),
                "exp": json.dumps({"text": "t", "label": label, "exp": rng.choice(JUNK_EXP + [-1, 2.5, None])}),
                "utf8": f'{{"text": "caf\udce9", "label": {label}, "exp": {exp}}}',
                "broken": rng.choice(['{"text": "t", "label": 1', "[1, 2]", '"just text"', "{}", "null", '{"text": "t", "label": NaN}']),
                "stray": '{"text": "t\\", "label": 1}',
                "nested": "[" * 100_000,
                "types": json.dumps({"text": rng.choice([3, None, "", "  ", ["a"]]), "label": label, "exp": exp}),
                "bigint": '{"text": "t", "label": ' + "9" * 5000 + "}",
                "nul": json.dumps({"text": "te\x00xt", "label": label, "exp": exp}),
            }.get(kind, "")
        data = line.encode("utf-8", "surrogateescape")
        if kind == "bytes":
            data = _random_line(rng, quotes=False)  # see docs/bad_input.md: a second quote can close a stray one
            if not (data.strip(b"\r") if csv_format else data.decode("utf-8", "replace").strip()):
                data = b"x"
        elif kind == "blank":
            data = b""
        lines.append(data)
        records += 1 if kind != "blank" else 0
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Stream(path, records, good, sum(kinds.values()), kinds)


def npz_stream(path: Path, n: int, fuzz: float, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(size=(n, 4)) + y[:, None]
    x[:, 0] = TAG0 + np.arange(n)
    float_labels = seed % 2 == 1
    y = y.astype(np.float64 if float_labels else np.int64)
    exp = np.array([_experience(i, n) for i in range(n)], dtype=np.float64)
    fuzzed = rng.random(n) < fuzz
    kinds = Counter()
    for i in np.flatnonzero(fuzzed):
        kind = ["x", "label", "exp"][rng.integers(3)]
        kinds[kind] += 1
        x[i, 0] = -1
        if kind == "x":
            x[i, rng.integers(1, 4)] = [np.nan, np.inf, -np.inf, 1e308, 3.5e38, -1e39][rng.integers(6)]
        elif kind == "label":
            junk = [-1, 200_000, 10**12, 2**62] + ([2.5, np.nan, 1e300] if float_labels else [])
            y[i] = junk[rng.integers(len(junk))]
        else:
            exp[i] = [-1, 2.5, np.nan, 1e300][rng.integers(4)]
    np.savez(path, x=x, y=y, experience=exp)
    return Stream(path, n, [TAG0 + int(i) for i in np.flatnonzero(~fuzzed)], int(fuzzed.sum()), kinds)


# -- one case: a real `lifelong run` ---------------------------------------------------------------------


def pipeline_toml(reader: str, stream: Stream, tags: Path) -> str:
    if reader == "npz":
        table = f'reader = "npz"\npath = "{stream.path}"'
    elif reader == "csv":
        table = f'reader = "csv"\npath = "{stream.path}"\nexperience = "exp"'
    else:
        table = f'reader = "text"\npath = "{stream.path}"\nexperience = "exp"\nmax_bytes = 48'
    model = 'name = "fuzz-bytes"' if reader.startswith("text") else 'name = "mlp"\nhidden = [16]'
    kind = "text" if reader.startswith("text") else "feature"
    return f"""
[stream]
{table}

[model]
{model}

[learner]
epochs = 1
device = "cpu"
progress = false
batch_size = 32
strategies = ["naive"]

[boundary]
detector = "experience-change"

[tracking]
trackers = ["fuzz-tags"]

[tracking.fuzz-tags]
path = "{tags}"
kind = "{kind}"
"""


def run_case(reader: str, seed: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    case = tmp / f"{reader}-{seed}"
    case.mkdir()
    if reader == "csv":
        stream = csv_stream(case / "stream.csv", args.records, args.fuzz, seed)
    elif reader == "npz":
        stream = npz_stream(case / "stream.npz", args.records, args.fuzz, seed)
    else:
        csv_format = reader == "text-csv"
        stream = text_stream(case / ("stream.csv" if csv_format else "stream.jsonl"), args.records, args.fuzz, seed, csv_format)
    tags, summary_path, dead = case / "tags.jsonl", case / "summary.json", case / "dead_letters.jsonl"
    (case / "pipeline.toml").write_text(pipeline_toml(reader, stream, tags))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "lifelong.cli", "--plugin", "fuzz", "run", str(case / "pipeline.toml"),
               "--summary", str(summary_path), "--dead-letters", str(dead)]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=case, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=args.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        hung = True
    wall = time.monotonic() - started
    result: dict[str, Any] = {
        "reader": reader, "seed": seed, "records": stream.records, "fuzzed": stream.fuzzed, "good": len(stream.good),
        "fuzz_kinds": dict(stream.kinds), "exit": process.returncode, "hang": hung, "wall_s": wall,
        "crash": (not hung and process.returncode != 0) or "Traceback" in err,
        "stderr_tail": err[-2000:] if (process.returncode or "Traceback" in err) else "",
    }
    entries = [json.loads(line) for line in tags.read_text().splitlines()] if tags.exists() else []
    trained = Counter(t for e in entries for t in e.get("tags", []))
    result["lost_good"] = sum(1 for t in stream.good if t not in trained)
    result["good_trained_twice"] = sum(1 for t in stream.good if trained[t] > 1)
    result["generations"] = sum(1 for e in entries if "generation" in e)
    result["poisoned_generations"] = sum(1 for e in entries if e.get("finite") is False)
    result["final_model_finite"] = next((e["final_finite"] for e in entries if "final_finite" in e), None)
    result["poisoned"] = result["poisoned_generations"] + (result["final_model_finite"] is False)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    letters = [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []
    result["dead_letters"] = sum(1 for d in letters if "step" not in d)  # the records the reader refused
    result["not_applied"] = sum(1 for d in letters if "step" in d)  # stream batches the learner's guard skipped
    result["reasons"] = dict(Counter(_reason_class(d["reason"]) for d in letters).most_common())
    if summary is not None:
        result["samples_seen"] = summary["samples_seen"]
        result["unaccounted"] = stream.records - summary["samples_seen"] - summary["dead_letters"]["count"]
        result["fuzzed_but_valid"] = summary["samples_seen"] - (len(stream.good) - result["lost_good"])
        result["summary_extra"] = {k: v for k, v in summary.items() if "finite" in k or "skipped" in k}
    else:
        result["samples_seen"] = None
        result["unaccounted"] = None
    return result


def _reason_class(reason: str) -> str:
    """A dead letter's reason without its values: what kind of bad record it was."""
    for key in ("beyond float32", "NaN or infinite", "not a number", "fields, got", "quote is not closed", "unparseable CSV",
                "not valid UTF-8", "is not an integer, and the label", "is negative, and the label", "is not one of the classes",
                "label column", "label field", "is not below max_classes", "too large", "experience", "unparseable JSON",
                "expected a JSON object", "text field", "label", "x has"):
        if key in reason:
            return key
    return reason[:40]


# -- the report ------------------------------------------------------------------------------------------

TARGETS = ("crashes", "hangs", "lost_good", "unaccounted", "poisoned")


def aggregate(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for reader in dict.fromkeys(c["reader"] for c in cases):
        mine = [c for c in cases if c["reader"] == reader]
        out[reader] = {
            "cases": len(mine),
            "records": sum(c["records"] for c in mine),
            "fuzzed": sum(c["fuzzed"] for c in mine),
            "dead_letters": sum(c["dead_letters"] for c in mine),
            "trained": sum(c["samples_seen"] or 0 for c in mine),
            "fuzzed_but_valid": sum(c.get("fuzzed_but_valid") or 0 for c in mine),
            "generations": sum(c["generations"] for c in mine),
            "crashes": sum(bool(c["crash"]) for c in mine),
            "hangs": sum(bool(c["hang"]) for c in mine),
            "lost_good": sum(c["lost_good"] for c in mine),
            "unaccounted": sum(abs(c["unaccounted"]) if c["unaccounted"] is not None else c["records"] for c in mine),
            "poisoned": sum(c["poisoned"] for c in mine),
            "wall_s_median": float(np.median([c["wall_s"] for c in mine])),
            "wall_s_max": max(c["wall_s"] for c in mine),
        }
    return out


def markdown(result: dict[str, Any]) -> list[str]:
    meta, totals = result["meta"], result["records"]["totals"]
    changed = "changed during the run" if meta["code_changed_during_run"] else "unchanged during the run"
    lines = [
        (
            f"Fuzzed records through `lifelong run`; commit {meta['commit']}, lifelong/ + plugins/ sources "
            f"{meta['source_fingerprint'][0]} ({changed}), {meta['cpu_count']} shared CPUs, torch {meta['torch']}, "
            f"OMP_NUM_THREADS={meta['omp_threads']}."
        ),
        f"Command: `{meta['command']}`",
        "",
        (
            f"{meta['records']:,} records per case ({meta['fuzz']:.0%} fuzzed), {meta['seeds']} seeds per reader, each case one "
            f"`lifelong run` process under a {meta['timeout']:.0f} s timeout (naive, 1 epoch, test_fraction 0: every good "
            "record must be trained)."
        ),
        "",
        (
            "| reader | cases | records | fuzzed | dead letters | trained | fuzzed but valid | generations | **crashes** "
            "| **hangs** | **lost good** | **unaccounted** | **poisoned** | wall s (median / max) |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for reader, t in totals.items():
        lines.append(
            f"| {reader} | {t['cases']} | {t['records']:,} | {t['fuzzed']:,} | {t['dead_letters']:,} | {t['trained']:,} | "
            f"{t['fuzzed_but_valid']:,} | {t['generations']} | **{t['crashes']}** | **{t['hangs']}** | **{t['lost_good']}** | "
            f"**{t['unaccounted']}** | **{t['poisoned']}** | {t['wall_s_median']:.1f} / {t['wall_s_max']:.1f} |"
        )
    ok = all(t[k] == 0 for t in totals.values() for k in TARGETS)
    lines += ["", f"Target (0 crashes, hangs, lost good records, unaccounted records, poisoned generations): **{'met' if ok else 'NOT met'}**."]
    reasons: Counter = Counter()
    for case in result["records"]["cases"]:
        reasons.update(case["reasons"])
    lines += ["", "Dead letters by reason (all cases):", "", "| reason | count |", "| --- | ---: |"]
    lines += [f"| {reason} | {count:,} |" for reason, count in reasons.most_common()]
    failing = [c for c in result["records"]["cases"] if any((c.get(k) or 0) for k in ("crash", "hang", "lost_good", "unaccounted", "poisoned"))]
    if failing:
        lines += ["", "Failing cases:", ""]
        for c in failing:
            lines.append(f"- {c['reader']} seed {c['seed']}: exit {c['exit']}, hang {c['hang']}, lost {c['lost_good']}, "
                         f"unaccounted {c['unaccounted']}, poisoned {c['poisoned']}; stderr: `{c['stderr_tail'][-300:]!r}`")
    return lines


def records_part(args: argparse.Namespace) -> dict[str, Any]:
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp_name:
        for reader in args.readers:
            for seed in range(args.seeds):
                case = run_case(reader, seed, args, Path(tmp_name))
                cases.append(case)
                print(f"{reader} seed {seed}: exit {case['exit']}, {case['wall_s']:.1f} s, dead letters {case['dead_letters']}, "
                      f"lost {case['lost_good']}, unaccounted {case['unaccounted']}, poisoned {case['poisoned']}", flush=True)
    return {"cases": cases, "totals": aggregate(cases)}


def main() -> int:
    from common import git_commit, provenance, source_fingerprint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["records", "configs"], default="records")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--readers", type=lambda s: s.split(","), default=list(READERS))
    parser.add_argument("--fuzz", type=float, default=0.2, help="share of records fuzzed")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one `lifelong run` may take")
    parser.add_argument("--name", default="", help="results file name (default fuzz_<part>)")
    args, rest = parser.parse_known_args()
    if args.part == "configs":
        return subprocess.call([sys.executable, str(BENCH / "fuzz_configs.py"), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    unknown = set(args.readers) - set(READERS)
    if unknown:
        parser.error(f"unknown readers {sorted(unknown)}; choose from {', '.join(READERS)}")
    command = ("OMP_NUM_THREADS=1 python bench/fuzz.py " + " ".join(sys.argv[1:])).strip()
    started = time.monotonic()
    commit_at_start, source_at_start = git_commit(), source_fingerprint()
    result: dict[str, Any] = {"records": records_part(args)}
    result["meta"] = {
        **provenance(command, commit_at_start, source_at_start),
        "part": args.part,
        "records": args.records,
        "seeds": args.seeds,
        "readers": args.readers,
        "fuzz": args.fuzz,
        "timeout": args.timeout,
        "bench_seconds": time.monotonic() - started,
    }
    name = args.name or f"fuzz_{args.part}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    lines = markdown(result)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    totals = result["records"]["totals"]
    return 0 if all(t[k] == 0 for t in totals.values() for k in TARGETS) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
