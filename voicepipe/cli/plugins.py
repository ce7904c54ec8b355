"""``voicepipe plugins``: every registered stage type and engine, where each comes from, and the chat models known to
work."""

from __future__ import annotations

import argparse

from voicepipe.registry import ENGINE_ROLES, ENTRY_POINT_GROUP, RegisteredInfo, engine_registry, list_stages

HELP = "list the registered stage types and engines (entry-point groups voicepipe.stages, voicepipe.engines.*)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _registered() -> list[tuple[str, str, list[RegisteredInfo]]]:
    """(kind, entry-point group, entries) for the stages and each engine role."""
    found = [("stage", ENTRY_POINT_GROUP, list_stages())]
    for role in ENGINE_ROLES:
        registry = engine_registry(role)
        found.append((f"{role} engine", registry.group, registry.list()))
    return found


def run(args: argparse.Namespace) -> int:
    groups = _registered()
    if args.json:
        import json

        print(
            json.dumps(
                [
                    {
                        "kind": kind,
                        "group": group,
                        "name": i.name,
                        "target": i.target,
                        "origin": i.origin,
                        "ok": i.error is None,
                        "error": i.error,
                    }
                    for kind, group, infos in groups
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    broken = 0
    for kind, group, infos in groups:
        table = Table(title=f"{kind}s ({group})")
        for column in ("name", "class", "from", "status"):
            table.add_column(column)
        for i in infos:
            table.add_row(i.name, i.target, i.origin, "ok" if i.error is None else f"[red]failed: {i.error}[/red]")
        console.print(table)
        broken += sum(i.error is not None for i in infos)
    console.print(_known_models_table())
    if broken:
        Console(stderr=True).print(f"{broken} registered stage(s) or engine(s) failed to load; the others are usable.")
    return 0


def _known_models_table():  # noqa: ANN202 - rich is imported lazily
    from rich.table import Table

    from voicepipe.llm.known_models import KNOWN_CHAT_MODELS

    table = Table(title="chat models known to work (llm stage: engine + model)")
    table.add_column("model", no_wrap=True)  # names are what users copy: never cut them
    for column in ("engines", "model:", "checked"):
        table.add_column(column)
    for m in KNOWN_CHAT_MODELS:
        table.add_row(m.name, m.engines, m.source, m.checked)
    return table
