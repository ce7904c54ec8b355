"""``voicepipe plugins``: every registered stage type and where it comes from, and the chat models known to work."""

from __future__ import annotations

import argparse

from voicepipe.registry import ENTRY_POINT_GROUP, list_stages

HELP = f"list the stage types registered in the '{ENTRY_POINT_GROUP}' entry-point group"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    infos = list_stages()
    if args.json:
        import json

        print(
            json.dumps(
                [
                    {"name": i.name, "target": i.target, "origin": i.origin, "ok": i.error is None, "error": i.error}
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"voicepipe stages ({ENTRY_POINT_GROUP})")
    for column in ("type", "class", "from", "status"):
        table.add_column(column)
    for i in infos:
        table.add_row(i.name, i.target, i.origin, "ok" if i.error is None else f"[red]failed: {i.error}[/red]")
    Console().print(table)
    Console().print(_known_models_table())
    broken = sum(i.error is not None for i in infos)
    if broken:
        Console(stderr=True).print(f"{broken} stage type(s) failed to load; the others are usable.")
    return 0


def _known_models_table():  # noqa: ANN202 - rich is imported lazily
    from rich.table import Table

    from voicepipe.llm.known_models import KNOWN_CHAT_MODELS

    table = Table(title="chat models known to work (llm stage: backend + model)")
    table.add_column("model", no_wrap=True)  # names are what users copy: never cut them
    for column in ("backends", "model:", "checked"):
        table.add_column(column)
    for m in KNOWN_CHAT_MODELS:
        table.add_row(m.name, m.backends, m.source, m.checked)
    return table
