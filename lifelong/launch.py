"""``lifelong run --nproc N``: start N ranks of the same run on this machine and supervise them.

A convenience for one machine; across machines use ``torchrun`` (``torchrun --nnodes … -m lifelong
run …``), which sets the same environment. The ranks rendezvous through a file in a temporary
directory (``file://``), not a TCP store, so nothing listens beyond what gloo or NCCL open, and
gloo is kept on the loopback interface unless ``GLOO_SOCKET_IFNAME`` says otherwise.

Supervision: SIGTERM and SIGINT are passed on to every rank once (each finishes its step, rank 0
writes a checkpoint, all stop together); a supervisor that dies (even by SIGKILL) sends its ranks
SIGTERM on Linux. When a rank exits with an error, the others stop by
themselves at their next collective (:class:`lifelong.distributed.RankLost`); any still running
after ``grace`` seconds are terminated, then killed. The exit status is that of the first rank
that failed, else 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lifelong.distributed import INIT_METHOD_ENV

POLL = 0.2


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``, for the ranks' own command lines.

    >>> strip_nproc(["run", "--nproc", "2", "p.toml", "--nproc=3"])
    ['run', 'p.toml']
    """
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def say(message: str) -> None:
    print(f"lifelong: {message}", file=sys.stderr, flush=True)


def spawn(nproc: int, argv: list[str], grace: float = 30.0) -> int:
    """Run ``python -m lifelong *argv`` as ``nproc`` ranks; returns the job's exit status."""
    with tempfile.TemporaryDirectory(prefix="lifelong-ranks-") as tmp:
        base = dict(os.environ)
        base.update({
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            INIT_METHOD_ENV: Path(tmp, "rendezvous").as_uri(),
            "MASTER_ADDR": "127.0.0.1",
        })
        base.setdefault("GLOO_SOCKET_IFNAME", "lo")
        ranks = []
        for rank in range(nproc):
            env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            # a session of its own: a terminal's Ctrl-C reaches the ranks once, through this supervisor;
            # and SIGTERM when the supervisor dies, so no rank outlives it
            ranks.append(
                subprocess.Popen([sys.executable, "-m", "lifelong", *argv], env=env, start_new_session=True, preexec_fn=_end_with_parent)
            )
        return _supervise(ranks, grace)


def _end_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _supervise(ranks: list[subprocess.Popen], grace: float) -> int:
    def forward(signum: int, frame: object) -> None:
        for process in ranks:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed: tuple[int, int] | None = None  # (rank, status) of the first rank that failed
    deadline = None
    try:
        while any(p.poll() is None for p in ranks):
            for rank, process in enumerate(ranks):
                code = process.poll()
                if code not in (None, 0) and failed is None:
                    failed = (rank, code)
                    reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
                    say(f"rank {rank} stopped with {reason}; the other ranks stop at their next step")
                    deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                _stop(ranks)
                break
            time.sleep(POLL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is None:  # ranks that exited between two polls
        failed = next(((rank, p.returncode) for rank, p in enumerate(ranks) if p.returncode), None)
    if failed is None:
        return 0
    code = failed[1]
    return 128 - code if code < 0 else code


def _stop(ranks: list[subprocess.Popen]) -> None:
    say("ranks still running after the grace period: terminating them")
    for process in ranks:
        if process.poll() is None:
            process.terminate()
    end = time.monotonic() + 10
    for process in ranks:
        try:
            process.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
