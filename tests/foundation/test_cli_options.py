"""Command-line options made from config fields: types, choices, defaults and errors come from the one model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from voicepipe.cli.main import main
from voicepipe.cli.options import add_model_options, validate_options, values_from_args
from voicepipe.errors import UserError


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="where the weights are")
    threads: int = Field(2, ge=1, description="CPU threads")
    speed: float = Field(1.0, gt=0.0, le=2.0, description="speaking rate")
    voice: Literal["a", "b"] = Field("a", description="which voice")
    language: str | None = Field("en", description="None: detect it")
    warm_up: bool = Field(True, description="synthesize once before the first turn")
    cache: Path | None = None


FIELDS = ["model", "threads", "speed", "voice", "language", "warm_up", "cache"]


def parse(*argv: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="test")
    add_model_options(parser, Settings, FIELDS)
    return parser, parser.parse_args(argv)


def test_options_the_user_leaves_out_keep_the_models_defaults() -> None:
    _, args = parse()
    assert values_from_args(args, FIELDS) == {}
    assert validate_options(Settings, values_from_args(args, FIELDS)) == Settings()


def test_each_option_is_typed_from_its_field() -> None:
    _, args = parse(
        "--threads", "4", "--speed", "1.5", "--voice", "b", "--language", "none", "--no-warm-up", "--cache", "/tmp/c"
    )
    values = values_from_args(args, FIELDS)
    assert values == {
        "threads": 4,
        "speed": 1.5,
        "voice": "b",
        "language": None,
        "warm_up": False,
        "cache": Path("/tmp/c"),
    }
    assert validate_options(Settings, values) == Settings(**values)


def test_help_shows_the_description_and_default_and_choices(capsys) -> None:
    parser, _ = parse()
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads THREADS CPU threads (default: 2)" in text
    assert "--voice {a,b} which voice (default: a)" in text
    assert "--warm-up, --no-warm-up" in text and "(default: on)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--threads", "many"], "invalid int value: 'many'"), (["--voice", "c"], "invalid choice: 'c'")],
)
def test_a_value_of_the_wrong_type_is_an_argparse_error(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_value_the_model_rejects_names_its_option() -> None:
    _, args = parse("--speed", "3")
    with pytest.raises(UserError, match=r"^--speed: Input should be less than or equal to 2"):
        validate_options(Settings, values_from_args(args, FIELDS))
    with pytest.raises(UserError, match=r"^--pitch: does not apply to the b voice"):
        validate_options(Settings, {"pitch": 1.0}, what="the b voice")


def test_a_field_that_cannot_be_an_option_is_a_programming_error() -> None:
    class Nested(BaseModel):
        names: list[str] = []

    with pytest.raises(TypeError, match="names"):
        add_model_options(argparse.ArgumentParser(), Nested, ["names"])
    with pytest.raises(KeyError, match="nope"):
        add_model_options(argparse.ArgumentParser(), Settings, ["nope"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--engine", "mlx-whisper", "--threads", "2"], "--threads: does not apply to the mlx-whisper engine"),
        (["--engine", "mlx-whisper", "--beam-size", "5"], "--beam-size: mlx-whisper decodes greedily only"),
        (["--beam-size", "0"], "--beam-size: Input should be greater than or equal to 1"),
        (["--engine", "whisper.cpp"], "--engine: unknown asr engine 'whisper.cpp'"),
    ],
)
def test_transcribe_takes_its_engine_options_from_the_engine_configs(options, message, tmp_path, capsys) -> None:
    # the options are checked before the file is read or any model loads
    assert main(["transcribe", str(tmp_path / "missing.wav"), *options]) == 2
    assert message in capsys.readouterr().err
