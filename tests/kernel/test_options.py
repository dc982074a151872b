"""Typed option schemas: coercion, defaults, and errors that name the field path."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from lifelong import options
from lifelong.errors import ConfigError


@dataclass
class Example:
    size: int = 3
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    mode: Literal["a", "b"] = "a"
    widths: list[int] = field(default_factory=lambda: [1, 2])
    name: str | None = None
    flag: bool = False

    def check(self):
        if self.size < 0:
            raise ValueError("size must not be negative")


def test_defaults_and_coercion():
    value = options.validate(Example, {"rate": 2, "widths": [4], "name": "x"}, "strategy.demo")
    assert value == Example(size=3, rate=2.0, widths=[4], name="x")
    assert isinstance(value.rate, float)


@pytest.mark.parametrize(
    "data, field_path, expected",
    [
        ({"size": "3"}, "strategy.demo.size", "expected int"),
        ({"size": True}, "strategy.demo.size", "expected int"),
        ({"mode": "c"}, "strategy.demo.mode", "'a' | 'b'"),
        ({"widths": [1, "x"]}, "strategy.demo.widths[1]", "expected int"),
        ({"sise": 3}, "strategy.demo.sise", "unknown option (known options: flag, mode, name, rate, size, widths)"),
        ({"size": -1}, "strategy.demo", "size must not be negative"),
    ],
)
def test_errors_name_the_field(data, field_path, expected):
    with pytest.raises(ConfigError) as info:
        options.validate(Example, data, "strategy.demo")
    assert info.value.field == field_path
    assert expected in str(info.value)


def test_describe_lists_types_defaults_and_help():
    rows = {row["name"]: row for row in options.describe(Example)}
    assert rows["rate"] == {"name": "rate", "type": "float", "default": 0.5, "help": "a rate"}
    assert rows["widths"]["default"] == [1, 2]
    assert rows["name"]["type"] == "str | none"


@dataclass
class Keyed:
    lambda_: float = field(default=1.0, metadata={"key": "lambda", "help": "strength"})


def test_a_key_in_metadata_names_an_option_that_is_a_python_keyword():
    assert options.validate(Keyed, {"lambda": 3}, "strategy.ewc") == Keyed(lambda_=3.0)
    assert options.to_dict(Keyed(2.0)) == {"lambda": 2.0}
    assert options.describe(Keyed)[0]["name"] == "lambda"
    with pytest.raises(ConfigError) as info:
        options.validate(Keyed, {"lambda_": 3}, "strategy.ewc")
    assert info.value.field == "strategy.ewc.lambda_" and "known options: lambda" in str(info.value)
    with pytest.raises(ConfigError) as info:
        options.validate(Keyed, {"lambda": "x"}, "strategy.ewc")
    assert info.value.field == "strategy.ewc.lambda"
