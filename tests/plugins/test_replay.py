"""Replay and joint: the memory's sampling laws, its bounds and state, and what they buy on split digits."""

import doctest
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from lifelong import checkpoint
from lifelong.types import Batch, StreamInfo
from lifelong_strategies import joint as joint_module
from lifelong_strategies import replay as replay_module
from lifelong_strategies.joint import Joint
from lifelong_strategies.replay import Replay, ReplayOptions, water_level

CPU = torch.device("cpu")


def started(strategy, info=StreamInfo((1,), 10), seed=0):
    strategy.on_run_start(SimpleNamespace(info=info, device=CPU, seed=seed))
    return strategy


def ids(start, stop, y=None, task=None):
    """A batch whose single feature is the sample's position in the stream."""
    x = torch.arange(start, stop, dtype=torch.float32)[:, None]
    y = torch.zeros(stop - start, dtype=torch.long) if y is None else y
    return Batch(x=x, y=y, task=task)


def stored_ids(replay):
    return replay.buffer.x[: replay.filled, 0].long()


def positional_pvalue(hits: torch.Tensor, stream: int, bins: int) -> float:
    """Chi-square p-value that stored stream positions fall evenly into ``bins`` equal ranges."""
    counts = torch.bincount(hits * bins // stream, minlength=bins).double()
    return chisquare(counts.numpy()).pvalue


@pytest.mark.parametrize("module", [replay_module, joint_module])
def test_the_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_reservoir_keeps_every_sample_of_the_stream_with_equal_probability():
    stream, memory, batch, runs, bins = 10_000, 1_000, 100, 20, 100
    hits = []
    for seed in range(runs):
        replay = started(Replay(ReplayOptions(fill="stream", memory=memory)), seed=seed)
        for start in range(0, stream, batch):
            replay.after_step(ids(start, start + batch), None, first_pass=True)
        assert replay.filled == memory and len(set(stored_ids(replay).tolist())) == memory
        hits.append(stored_ids(replay))
    hits = torch.cat(hits)
    # 200 expected per bin; sampling without replacement only makes the statistic smaller
    assert positional_pvalue(hits, stream, bins) > 1e-3
    # the test has the power to see a biased memory: "keep the latest" fails it outright
    latest = torch.arange(stream - memory, stream).repeat(runs)
    assert positional_pvalue(latest, stream, bins) < 1e-12


def test_reservoir_resolves_collisions_within_a_batch_like_the_sequential_algorithm():
    # A tiny memory and large batches: several samples of a batch often draw the same slot. Only
    # "the later one overwrites" keeps positions within a batch uniform ("first wins" gives p ~ 1e-150).
    stream, memory, batch = 1_000, 5, 200
    hits = []
    for seed in range(300):
        replay = started(Replay(ReplayOptions(fill="stream", memory=memory)), seed=seed)
        for start in range(0, stream, batch):
            replay.after_step(ids(start, start + batch), None, first_pass=True)
        hits.append(stored_ids(replay))
    hits = torch.cat(hits)
    assert positional_pvalue(hits % batch, batch, 10) > 1e-3
    assert positional_pvalue(hits, stream, 10) > 1e-3


def test_memory_never_exceeds_its_size_and_replays_at_most_what_it_holds():
    replay = started(Replay(ReplayOptions(fill="stream", memory=50, replay_batch=0)))
    assert replay.augment_batch(ids(0, 32)) is None  # nothing stored yet
    replay.after_step(ids(0, 20), None, first_pass=True)
    size = replay.memory_bytes  # the samples are allocated, all 50 + 1 scratch row, at the first write
    assert size == replay.buffer.nbytes == 51 * ids(0, 1).x.nbytes + 51 * 8
    assert len(replay.augment_batch(ids(0, 32))) == 20  # min(stream batch, filled)
    for start in range(20, 2000, 45):
        replay.after_step(ids(start, start + 45), None, first_pass=True)
        assert replay.filled <= 50 and replay.buffer.x.shape[0] == 51 and replay.memory_bytes == size
    drawn = replay.augment_batch(ids(0, 32))
    assert len(drawn) == 32 and set(drawn.x[:, 0].long().tolist()) <= set(stored_ids(replay).tolist())
    # repeated passes (extra epochs) are not stored again
    seen = replay.seen
    replay.after_step(ids(0, 45), None, first_pass=False)
    assert replay.seen == seen


def test_class_balanced_shares_the_memory_evenly_among_the_classes_seen():
    replay = started(Replay(ReplayOptions(fill="stream", memory=200, policy="class-balanced")))
    start = 0
    for label in range(10):  # class-incremental: one class at a time
        for _ in range(6):
            replay.after_step(ids(start, start + 32, y=torch.full((32,), label)), None, first_pass=True)
            start += 32
        counts = torch.bincount(replay.buffer.y[: replay.filled], minlength=10)[: label + 1]
        assert replay.filled == min(200, start)
        assert counts.max() - counts.min() <= 1, counts.tolist()
    # each class keeps a spread-out (random) part of its own stream, not its first or last samples
    kept = stored_ids(replay)[replay.buffer.y[: replay.filled] == 0]
    assert kept.min() < 40 and kept.max() > 150


def test_water_level_matches_a_brute_force_search():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        counts = torch.randint(0, 60, (int(torch.randint(1, 8, (1,), generator=generator)),), generator=generator)
        total = int(torch.randint(1, 200, (1,), generator=generator))
        level, leftover = water_level(counts, total)
        if counts.sum() <= total:
            assert leftover == 0 and level >= counts.max()
            continue
        best = max(L for L in range(total + 1) if counts.clamp(max=L).sum() <= total)
        assert level == best and leftover == total - counts.clamp(max=best).sum()
        assert leftover < (counts > best).sum()


@pytest.mark.parametrize("fill", ["stream", "experience-end"])
@pytest.mark.parametrize("policy", ["reservoir", "class-balanced"])
def test_storing_and_sampling_never_read_a_tensor_on_the_host(policy, fill):
    replay = started(Replay(ReplayOptions(memory=64, policy=policy, fill=fill)))
    if fill == "experience-end":  # a memory to replay from, then the per-batch work of the next experience
        for start in range(0, 320, 32):
            replay.after_step(ids(start, start + 32, y=torch.arange(32) % 10), None, first_pass=True)
        replay.on_boundary()
    batches = [ids(start, start + 32, y=torch.arange(32) % 10) for start in range(0, 320, 32)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches:
            replay.augment_batch(batch)
            replay.after_step(batch, None, first_pass=True)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::index_copy_" in ops  # the profile saw the work ...
    assert not ops & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero"}  # ... and no device read


def test_class_balanced_lets_a_rare_class_keep_everything():
    replay = started(Replay(ReplayOptions(fill="stream", memory=300, policy="class-balanced")), info=StreamInfo((1,), 3))
    labels = torch.cat([torch.zeros(1000), torch.ones(50), torch.full((500,), 2)]).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    labels = labels[order]
    for start in range(0, len(labels), 32):
        replay.after_step(ids(start, min(start + 32, len(labels)), y=labels[start : start + 32]), None, first_pass=True)
    assert torch.bincount(replay.buffer.y[:300]).tolist() == [125, 50, 125]
    # stored samples keep their own labels
    assert torch.equal(labels[stored_ids(replay)], replay.buffer.y[:300])


def test_class_balanced_counts_each_task_head_separately():
    info = StreamInfo((1,), 2, scenario="task", num_tasks=2)
    replay = started(Replay(ReplayOptions(fill="stream", memory=40, policy="class-balanced")), info=info)
    for task in range(2):
        for start in range(0, 200, 20):
            y = torch.arange(20) % 2
            replay.after_step(ids(start, start + 20, y=y, task=torch.full((20,), task)), None, first_pass=True)
    pairs = replay.buffer.task[:40] * 2 + replay.buffer.y[:40]
    assert torch.bincount(pairs).tolist() == [10, 10, 10, 10]
    assert replay.augment_batch(ids(0, 8, task=torch.zeros(8, dtype=torch.long))).task is not None


@pytest.mark.parametrize("policy", ["reservoir", "class-balanced"])
def test_replay_state_round_trips_and_resumes_identically(policy):
    live = started(Replay(ReplayOptions(fill="stream", memory=64, policy=policy)))
    for start in range(0, 640, 32):
        live.after_step(ids(start, start + 32, y=torch.arange(32) % 4), None, first_pass=True)
    state = checkpoint.to_cpu(live.state_dict())
    resumed = Replay(ReplayOptions(fill="stream", memory=64, policy=policy))
    resumed.load_state_dict(state)  # before the run starts: applied once the buffer exists
    started(resumed, seed=123)
    assert resumed.seen == live.seen and torch.equal(stored_ids(resumed), stored_ids(live))
    nxt = ids(640, 672, y=torch.arange(32) % 4)
    for strategy in (live, resumed):
        strategy.after_step(nxt, None, first_pass=True)
    assert torch.equal(stored_ids(resumed), stored_ids(live))  # the random stream is carried too
    with pytest.raises(ValueError, match="more than memory"):
        started(Replay(ReplayOptions(fill="stream", memory=10, policy=policy))).load_state_dict(state)


# -- fill = "experience-end" --------------------------------------------------------------------


def experiences(replay, sizes, batch=32, labels_per_experience=2, check=None):
    """Feed consecutive experiences of ``sizes`` samples (labels 2e, 2e + 1 in experience e), ending each."""
    start = 0
    for e, size in enumerate(sizes):
        for s in range(start, start + size, batch):
            b = ids(s, min(s + batch, start + size), y=labels_per_experience * e + torch.arange(min(batch, start + size - s)) % labels_per_experience)
            if check is not None:
                check(e, start, replay.augment_batch(b))
            replay.after_step(b, None, first_pass=True)
        replay.on_boundary()
        start += size
    return start


@pytest.mark.parametrize("policy", ["reservoir", "class-balanced"])
def test_experience_end_fill_never_replays_the_current_experience(policy):
    replay = started(Replay(ReplayOptions(memory=50, replay_batch=16, policy=policy, fill="experience-end")))
    drawn = []

    def check(e, start, batch):
        if e == 0:
            assert batch is None  # nothing is replayed before the first boundary
            return
        assert len(batch) == 16 and batch.x.max() < start  # past experiences only
        drawn.append(batch.y)

    stream = experiences(replay, [100, 60, 300, 40], check=check)
    assert replay.seen == stream and replay.filled == 50 and replay.stage_seen == 0
    # by the end every experience (labels 0-7) has been replayed and is in memory
    assert set(torch.cat(drawn).tolist()) == set(range(6))
    assert set(replay.buffer.y[:50].tolist()) == set(range(8))
    if policy == "class-balanced":
        counts = torch.bincount(replay.buffer.y[:50], minlength=8)
        assert counts.max() - counts.min() <= 1, counts.tolist()
    # the stream fill replays the current experience as it goes
    stream_fill = started(Replay(ReplayOptions(fill="stream", memory=50, replay_batch=16, policy=policy)))
    current = []
    experiences(stream_fill, [100, 60], check=lambda e, start, b: current.append(b is not None and bool((b.x >= start).any())))
    assert any(current)


def test_experience_end_fill_keeps_a_uniform_sample_of_the_whole_stream():
    # Reservoir folded at each boundary: every sample seen is in memory with probability memory / seen,
    # whatever experience it came from (experiences of unequal sizes, memory full after the first).
    sizes, memory, runs, bins = [2000, 500, 3000, 1500], 200, 40, 70
    stream = sum(sizes)
    hits = []
    for seed in range(runs):
        replay = started(Replay(ReplayOptions(memory=memory, fill="experience-end")), seed=seed)
        experiences(replay, sizes, batch=100)
        assert replay.filled == memory and len(set(stored_ids(replay).tolist())) == memory
        hits.append(stored_ids(replay))
    hits = torch.cat(hits)
    assert positional_pvalue(hits, stream, bins) > 1e-3
    # power: an experience-balanced memory (an equal share per experience) fails it
    per = memory // len(sizes)
    starts = torch.tensor([0, *sizes]).cumsum(0)
    balanced = torch.cat([starts[i] + torch.randperm(n, generator=torch.Generator().manual_seed(0))[:per]
                          for i, n in enumerate(sizes) for _ in range(runs)])
    assert positional_pvalue(balanced, stream, bins) < 1e-12
    # and a memory not yet full keeps everything
    small = started(Replay(ReplayOptions(memory=memory, fill="experience-end")))
    experiences(small, [64, 96])
    assert sorted(stored_ids(small).tolist()) == list(range(160))


@pytest.mark.parametrize("policy", ["reservoir", "class-balanced"])
def test_experience_end_state_round_trips_mid_experience(policy):
    options = ReplayOptions(memory=64, policy=policy, fill="experience-end")
    live = started(Replay(options))
    experiences(live, [320, 200])
    for start in range(520, 700, 30):  # half-way into the third experience: the staging memory is in use
        live.after_step(ids(start, start + 30, y=4 + torch.arange(30) % 2), None, first_pass=True)
    state = checkpoint.to_cpu(live.state_dict())
    assert state["fill"] == "experience-end" and state["stage_seen"] == 180 and len(state["stage"]["y"]) == 64
    resumed = Replay(options)
    resumed.load_state_dict(state)
    started(resumed, seed=123)
    assert (resumed.seen, resumed.stage_seen) == (live.seen, live.stage_seen)
    assert torch.equal(stored_ids(resumed), stored_ids(live))
    assert torch.equal(resumed.stage.x[:64], live.stage.x[:64])
    for strategy in (live, resumed):
        strategy.after_step(ids(700, 730, y=4 + torch.arange(30) % 2), None, first_pass=True)
        strategy.on_boundary()
        assert strategy.augment_batch(ids(0, 8)).x.max() >= 520  # the folded experience is replayed now
    assert torch.equal(stored_ids(resumed), stored_ids(live))  # the random stream is carried too
    # continued with fill = "stream", the staged samples join the memory at once
    stream = Replay(ReplayOptions(fill="stream", memory=64, policy=policy))
    stream.load_state_dict(state)
    started(stream)
    assert stream.seen == 700 and stream.filled == 64 and stored_ids(stream).max() >= 520


def test_the_stream_fill_in_the_pipeline(run):
    summary, runner = run(["learner.strategies=['replay']", "strategy.replay.memory=200", "strategy.replay.fill='stream'"])
    strategy = runner.plan.strategies["replay"]
    assert summary["acc"] > 0.5  # naive: 0.12, the default fill 0.86 (see below)
    assert strategy.seen == summary["samples_seen"] and strategy.filled == 200 and strategy.stage is None
    assert torch.bincount(strategy.buffer.y[:200], minlength=10).min() > 0


def test_joint_replays_every_past_sample_once_per_epoch():
    joint = started(Joint())
    for start in range(0, 96, 32):
        joint.after_step(ids(start, start + 32), None, first_pass=True)
    joint.on_boundary(None, None)
    for start in range(96, 192, 32):
        drawn = joint.augment_batch(ids(start, start + 32))
        assert len(drawn) == 32 and drawn.x.max() < 96  # one batch per completed span, past only
        joint.after_step(ids(start, start + 32), None, first_pass=True)
    epoch = torch.cat([joint.augment_batch(ids(0, 32)).x[:, 0] for _ in range(3)]).long()
    assert sorted(epoch.tolist()) == list(range(96))  # without replacement: each past sample once
    joint.on_boundary(None, None)
    assert len(joint.augment_batch(ids(0, 32))) == 64 and joint.stored == 192
    state = checkpoint.to_cpu(joint.state_dict())
    resumed = started(Joint())
    resumed.load_state_dict(state)
    assert (resumed.stored, resumed.past, resumed.spans) == (192, 192, 2)
    assert torch.equal(resumed.buffer.x[:192], joint.buffer.x[:192])


# -- in the pipeline, on real digits ---------------------------------------------------------------


def test_replay_beats_naive_and_joint_beats_replay_on_class_incremental_split_digits(run):
    naive, _ = run()
    replay, runner = run(["learner.strategies=['replay']", "strategy.replay.memory=200"])
    joint, _ = run(["learner.strategies=['joint']"])
    # measured (seed 0, 5 epochs): naive 0.12, replay(200) 0.86 (fill "stream": 0.75), joint 0.90
    assert naive["acc"] < 0.3
    assert replay["acc"] > naive["acc"] + 0.35
    assert joint["acc"] >= replay["acc"] and joint["acc"] > 0.8
    strategy = runner.plan.strategies["replay"]
    # stored once despite 5 epochs; the memory holds every class by the end (the default fill,
    # experience-end, folded the last experience in at its boundary)
    assert strategy.options.fill == "experience-end" and strategy.stage_seen == 0
    assert strategy.seen == replay["samples_seen"] and strategy.filled == 200
    assert torch.bincount(strategy.buffer.y[:200], minlength=10).min() > 0


def test_replay_in_the_task_scenario_stores_and_replays_task_ids(run):
    summary, runner = run(["stream.scenario='task'", "learner.strategies=['replay']", "learner.epochs=2"])
    memory = runner.plan.strategies["replay"].buffer
    assert sorted(memory.task[:200].unique().tolist()) == [0, 1, 2, 3, 4]
    assert summary["acc"] > 0.85


def test_replay_and_joint_in_a_task_free_domain_stream(run):
    for strategy in ("replay", "joint"):
        summary, runner = run(
            ["stream.reader='permuted-digits'", "stream.experiences=3", f"learner.strategies=['{strategy}']",
             "boundary.detector='window'", "boundary.batches=20", "learner.epochs=1"]
        )
        assert len(summary["generations"]) >= 3 and summary["acc"] > 0.5


def test_replay_memory_is_in_checkpoints_and_generations(run, tmp_path):
    summary, runner = run(
        [f"checkpoint.dir='{tmp_path / 'ckpt'}'", "learner.strategies=['replay']", "learner.epochs=2",
         "strategy.replay.policy='class-balanced'"]
    )
    assert "errors" not in summary
    _, _, strategy_state, _ = checkpoint.load(tmp_path / "ckpt")
    saved = strategy_state["replay"]
    live = runner.plan.strategies["replay"]
    assert saved["seen"] == live.seen == summary["samples_seen"] and saved["memory_bytes"] == live.memory_bytes
    assert torch.equal(saved["memory"]["x"], live.buffer.x[:200].cpu())
    assert torch.equal(saved["memory"]["y"], live.buffer.y[:200].cpu())
    assert runner.last_generation.strategy_state["replay"]["memory"]["x"].device.type == "cpu"
    fresh = Replay(ReplayOptions(policy="class-balanced"))
    fresh.load_state_dict(saved)
    started(fresh, info=runner.plan.info)
    assert torch.equal(fresh.buffer.y[:200], live.buffer.y[:200]) and fresh.seen == live.seen
