"""Load and validate ``pipeline.yaml`` before any model loads.

The whole file is checked in one pass: the top level against ``PipelineFile``, then each stage's fields against the
``Config`` model its stage class declares. Every problem is reported as ``file:line: field.path: problem`` (line
numbers come from the YAML node tree, since pydantic only knows paths), and all problems are reported at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicepipe.engine import EngineStageConfig
from voicepipe.errors import ConfigError, UserError
from voicepipe.memory.config import MemoryConfig
from voicepipe.registry import resolve_stage
from voicepipe.stage import Stage, StageConfig

__all__ = ["PipelineFile", "StageSpec", "LoadedPipeline", "load_pipeline", "parse_pipeline", "build_stages"]

_RESERVED = ("type", "name")

log = logging.getLogger("voicepipe.config")


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
        """Construct the stage; a constructor that raises (a plugin's bug) becomes one line naming the stage."""
        try:
            return self.stage_class(self.config, name=self.name)
        except (Exception, SystemExit) as exc:
            log.debug("constructing stage %s failed", self.name, exc_info=exc)
            raise UserError(
                f"stage '{self.name}' ({self.type_name}) failed to start: {type(exc).__name__}: {exc}"
            ) from exc


@dataclass
class LoadedPipeline:
    path: str
    settings: PipelineFile
    stages: list[StageSpec] = field(default_factory=list)


# -- line numbers ------------------------------------------------------------------------------------------------------


#: At most this many values once YAML aliases are expanded: a pipeline has dozens; nested aliases ("billion laughs")
#: can make a few hundred bytes expand to billions, and every later walk over the data would follow them.
MAX_EXPANDED_NODES = 10_000


def _expanded_size(root: yaml.Node) -> int | None:
    """How many nodes ``root`` has with aliases expanded (memoised per node, so this is linear); None if cyclic."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int | None:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            return None  # an alias inside its own anchor
        active.add(key)
        total = 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        for child in children:
            n = size(child)
            if n is None:
                return None
            total += n
            if total > MAX_EXPANDED_NODES:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _line_map(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map each path in the YAML document (keys and list indices) to its 1-based line (each node walked once)."""
    lines: dict[tuple[Any, ...], int] = {}
    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:  # an alias: its values were walked where the anchor is
            return
        seen.add(id(node))
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
        if e["type"] == "value_error" and "error" in e.get("ctx", {}):
            msg = str(e["ctx"]["error"])  # our own validators' messages, without pydantic's "Value error, "
        elif e["type"] == "extra_forbidden":
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


def _yaml_error(exc: yaml.YAMLError, filename: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = f"{mark.line + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(f"{filename}:{line} YAML syntax error: {problem}")


def parse_pipeline(text: str, filename: str = "pipeline.yaml") -> LoadedPipeline:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            size = _expanded_size(root)
            if size is None or size > MAX_EXPANDED_NODES:
                what = "refer to themselves" if size is None else f"expand to more than {MAX_EXPANDED_NODES:,} values"
                raise ConfigError(
                    f"{filename}:{root.start_mark.line + 1}: (top level): its YAML aliases (*name) {what}; "
                    "write the values out instead of nesting aliases"
                )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, filename) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{filename}:1: (top level): expected a mapping with a 'stages' list, got {type(data).__name__}"
        )

    lines = _line_map(root)
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
        if issubclass(cls.Config, EngineStageConfig) and not _engine_fields_valid(cls.Config, fields, at, report):
            continue
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


def _engine_fields_valid(
    config: type[EngineStageConfig], fields: dict[str, Any], at: tuple[Any, ...], report: Callable[..., None]
) -> bool:
    """Check an engine stage's ``engine:`` and the engine's own fields first, so each problem names its line."""
    own, rest = config.split(fields)
    name = config.engine_name(own)
    if not isinstance(name, str):
        return True  # the stage config reports a non-string 'engine'
    try:
        engine = config.engine_class(name)
    except UserError as exc:
        report((*at, "engine") if "engine" in own else at, str(exc))
        return False
    try:
        engine.Config.model_validate(rest)
    except ValidationError as exc:
        for path, msg in _problems(exc, at):
            report(path, msg)
        return False
    return True


def build_stages(loaded: LoadedPipeline) -> list[Stage]:
    """Construct the stages (cheap: constructors load nothing)."""
    return [spec.build() for spec in loaded.stages]
