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


def test_a_file_replaces_sections_and_its_learner_starts_from_the_option_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[stream]\nreader = "permuted-digits"\n[learner]\nlr = 0.01\n')
    raw = config.load(path)
    assert raw["stream"] == {"reader": "permuted-digits"}
    learner = config.learner_options(raw)
    # not the built-in demo's epochs = 5 and replay + EWC: the defaults the docs list
    assert (learner.lr, learner.epochs, learner.strategies) == (0.01, 1, ["naive"])
    assert config.learner_options(config.load(None)).epochs == 5  # the demo itself keeps its own


def test_a_file_without_a_learner_section_gets_the_option_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[model]\nname = "mlp"\n')
    learner = config.learner_options(config.load(path, ["learner.batch_size=64"]))
    assert (learner.epochs, learner.batch_size, learner.strategies) == (1, 64, ["naive"])
