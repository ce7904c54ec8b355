"""Load and validate ``pipeline.yaml`` before any model loads.

The whole file is checked in one pass: the top level against ``PipelineFile``, then each stage's fields against the
``Config`` model its stage class declares. Every problem is reported as ``file:line: field.path: problem`` (line
numbers come from the YAML node tree, since pydantic only knows paths), and all problems are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicepipe.errors import ConfigError, UserError
from voicepipe.memory.config import MemoryConfig
from voicepipe.registry import resolve_stage
from voicepipe.stage import Stage, StageConfig

__all__ = ["PipelineFile", "StageSpec", "LoadedPipeline", "load_pipeline", "parse_pipeline", "build_stages"]

_RESERVED = ("type", "name")


class PipelineFile(BaseModel):
    """The top level of ``pipeline.yaml``. Stage entries are validated by their own stage's config model."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(1, ge=1, le=1, description="File format version; only 1 exists.")
    name: str = "voicepipe"
    queue_size: int = Field(32, ge=1, le=10_000, description="Data frames each stage may have queued.")
    stages: list[dict[str, Any]] = Field(min_length=1)
    memory: MemoryConfig | None = Field(None, description="Memory budget, governor policy and jetsam limit.")


@dataclass
class StageSpec:
    """One validated stage entry: its class, its validated config and its unique name."""

    stage_class: type[Stage]
    config: StageConfig
    name: str
    type_name: str
    line: int | None = None

    def build(self) -> Stage:
        return self.stage_class(self.config, name=self.name)


@dataclass
class LoadedPipeline:
    path: str
    settings: PipelineFile
    stages: list[StageSpec] = field(default_factory=list)


# -- line numbers ------------------------------------------------------------------------------------------------------


def _line_map(text: str) -> dict[tuple[Any, ...], int]:
    """Map each path in the YAML document (keys and list indices) to its 1-based line."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _line_for(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _problems(err: ValidationError, prefix: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    found = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required field is missing"
        found.append(((*prefix, *loc), msg))
    return found


# -- loading -----------------------------------------------------------------------------------------------------------


def load_pipeline(path: str | Path) -> LoadedPipeline:
    """Read and validate a pipeline file; raises ``ConfigError`` listing every problem, or ``UserError``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file; pass the path of a pipeline.yaml (e.g. voicepipe run pipeline.yaml)")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; pass the path of a pipeline.yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the file ({exc})") from exc
    return parse_pipeline(text, str(p))


def parse_pipeline(text: str, filename: str = "pipeline.yaml") -> LoadedPipeline:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{filename}:{line} YAML syntax error: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{filename}:1: (top level): expected a mapping with a 'stages' list, got {type(data).__name__}"
        )

    lines = _line_map(text)
    problems: list[str] = []

    def report(path: tuple[Any, ...], msg: str) -> None:
        line = _line_for(lines, path)
        problems.append(f"{filename}:{line if line is not None else '?'}: {_dotted(path)}: {msg}")

    try:
        settings = PipelineFile.model_validate(data)
    except ValidationError as exc:
        for path, msg in _problems(exc, ()):
            report(path, msg)
        raise ConfigError(problems[0], problems) from None

    specs: list[StageSpec] = []
    used_names: set[str] = set()
    for i, entry in enumerate(settings.stages):
        at = ("stages", i)
        type_name = entry.get("type")
        if not isinstance(type_name, str) or not type_name:
            report((*at, "type") if "type" in entry else at, "every stage needs 'type: NAME' (see 'voicepipe plugins')")
            continue
        try:
            cls = resolve_stage(type_name)
        except UserError as exc:
            report((*at, "type"), str(exc))
            continue
        name = entry.get("name") or type_name.rsplit(":", 1)[-1]
        if not isinstance(name, str):
            report((*at, "name"), "must be a string")
            continue
        if name in used_names:
            report((*at, "name"), f"stage name '{name}' is used twice; give one of them another 'name:'")
            continue
        used_names.add(name)
        fields = {k: v for k, v in entry.items() if k not in _RESERVED}
        try:
            config = cls.Config.model_validate(fields)
        except ValidationError as exc:
            for path, msg in _problems(exc, at):
                report(path, msg)
            continue
        specs.append(StageSpec(cls, config, name, type_name, _line_for(lines, at)))

    if problems:
        raise ConfigError(problems[0], problems)
    return LoadedPipeline(filename, settings, specs)


def build_stages(loaded: LoadedPipeline) -> list[Stage]:
    """Construct the stages (cheap: constructors load nothing)."""
    return [spec.build() for spec in loaded.stages]
