"""Pipeline files and overrides: what merges, what replaces."""

from lifelong import config


def test_switching_component_starts_its_section_afresh():
    raw = config.load(None, ["stream.reader='permuted-digits'"])
    assert raw["stream"] == {"reader": "permuted-digits"}  # not the default's scenario = "class"
    raw = config.load(None, ["stream.scenario='task'", "stream.reader='permuted-digits'"])
    assert raw["stream"] == {"reader": "permuted-digits", "scenario": "task"}


def test_keeping_the_component_keeps_its_options():
    raw = config.load(None, ["stream.reader='split-digits'", "stream.experiences=2"])
    assert raw["stream"]["scenario"] == "class" and raw["stream"]["experiences"] == 2


def test_a_file_replaces_sections_and_merges_the_learner(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[stream]\nreader = "permuted-digits"\n[learner]\nlr = 0.01\n')
    raw = config.load(path)
    assert raw["stream"] == {"reader": "permuted-digits"}
    assert raw["learner"]["lr"] == 0.01 and raw["learner"]["strategies"] == ["replay", "ewc"]
