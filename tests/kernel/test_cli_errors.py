"""User errors exit with status 2 and a message that names the problem, never a traceback."""

import pytest
from click.testing import CliRunner

from lifelong.cli import main
from tests.conftest import cli


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def write(tmp_path, text):
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return str(path)


def test_missing_pipeline_file(tmp_path):
    assert "does-not-exist.toml' does not exist" in invoke("run", str(tmp_path / "does-not-exist.toml"))


def test_toml_syntax_error_names_the_line(tmp_path):
    out = invoke("run", write(tmp_path, "[stream]\nreader = \"split-digits\"\nexperiences = = 3\n"))
    assert "not valid TOML" in out and "line 3" in out


def test_unknown_reader_lists_the_available_ones(tmp_path):
    out = invoke("run", write(tmp_path, '[stream]\nreader = "kafka-ish"\n'))
    assert "stream: unknown reader 'kafka-ish'" in out
    assert "split-digits" in out and "permuted-digits" in out


def test_wrong_type_names_the_field_and_the_expected_type(tmp_path):
    out = invoke("run", write(tmp_path, '[learner]\nbatch_size = "big"\n'))
    assert "learner.batch_size: expected int, got 'big'" in out


def test_unknown_option_and_unknown_section(tmp_path):
    assert "model.hiden: unknown option" in invoke("run", "--set", "model.hiden=[8]")
    assert "unknwon: unknown section" in invoke("run", write(tmp_path, "[unknwon]\nx = 1\n"))


def test_strategy_table_with_a_typo_is_rejected():
    assert "strategy.naiev: unknown strategy 'naiev'" in invoke("run", "--set", "strategy.naiev.x=1")


def test_bad_override_syntax_and_bad_device():
    assert "expected section.key=value" in invoke("run", "--set", "learner")
    assert "learner.device" in invoke("run", "--set", "learner.device=tpu")


def test_option_check_failure():
    assert "stream: test_fraction must be in (0, 1)" in invoke("run", "--set", "stream.test_fraction=1.5")
    assert "stream: experiences (20) exceeds the number of classes (10)" in invoke("run", "--set", "stream.experiences=20")


@pytest.mark.slow
def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    result = cli("run", "--set", "learner.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "learner: lr must be positive, got -1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_validation_error_opens_no_mlflow_run(tmp_path):
    # pathnet refuses replay in its validate hook: before the tracker has created a store or a run
    store = tmp_path / "mlflow.db"
    result = cli(
        "run",
        "--set", "learner.strategies=['pathnet', 'replay']",
        "--set", "tracking.trackers=['mlflow']",
        "--set", f"tracking.mlflow.tracking_uri='sqlite:///{store}'",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "learner.strategies" in result.stderr and "does not compose with ['replay']" in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists() and not (tmp_path / "mlruns").exists()
