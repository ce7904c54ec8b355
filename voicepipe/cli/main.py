"""The ``voicepipe`` command. Exit codes: 0 success, 2 a user mistake (one clear line, no traceback), 130 stopped by
Ctrl-C, SIGTERM or SIGHUP (all three finish the same way: audio so far moved into place, metrics written), 1 anything
else (a failed write, a fatal pipeline error: one line; a bug: a traceback).

Each subcommand is a module ``voicepipe.cli.NAME`` exposing ``HELP``, ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

from voicepipe import __version__
from voicepipe.errors import ConfigError, UserError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("run", "validate", "plugins", "devices", "transcribe", "say")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicepipe", description="A real-time local voice assistant pipeline.")
    parser.add_argument("--version", action="version", version=f"voicepipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"voicepipe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"voicepipe.cli.{name}":
                continue  # that command is not part of this install
            raise
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def _setup_logging(verbosity: int) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(
        console=Console(stderr=True), show_path=False, show_time=verbosity > 1, markup=False, rich_tracebacks=False
    )
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@contextlib.contextmanager
def _stop_signals_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, service managers) and SIGHUP (closed terminal) become SIGINT, so they stop a run the way
    Ctrl-C does (asyncio turns SIGINT into cancelling the run, whose clean-up keeps the audio and metrics so far)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    for sig in wanted:
        with contextlib.suppress(OSError, ValueError):
            previous[sig] = signal.signal(sig, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    with _stop_signals_like_ctrl_c():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from voicepipe.outfile import OutputError

    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        from voicepipe.pipeline import PipelineError

        if isinstance(exc, PipelineError | OutputError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        traceback.print_exc()
        print(
            f"internal error: {type(exc).__name__}: {exc} (please report it with the traceback above)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
