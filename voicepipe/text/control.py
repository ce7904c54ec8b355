"""Remove terminal control sequences and control characters from text a model produced.

A reply may contain ANSI escapes (``\\x1b[31m``) or other control characters: printed raw they recolour or move the
user's terminal, and the TTS normalizer would read what is left of them ("[31m" -> "31 meters"). Every place that
shows or speaks model text passes it through ``strip_control`` first. Newlines and tabs are kept.

The patterns follow ECMA-48 (CSI, OSC/DCS strings, two-byte escapes); Python's standard library has no such helper.
"""

from __future__ import annotations

import re

__all__ = ["strip_control", "ControlStripper"]

_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement, erase
    r"|\x9b[0-?]*[ -/]*[@-~]"  # the same introduced by the 8-bit CSI
    r"|[\x1b][\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC/DCS/SOS/PM/APC strings (titles, hyperlinks)
    r"|\x1b[ -/]*[0-~]?"  # other escapes (charset switches, ESC c = reset), or a lone ESC
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    """``text`` without escape sequences and control characters (except newline and tab)."""
    if not text.isprintable():
        text = _CONTROLS.sub("", _SEQUENCES.sub("", text))
    return text


class ControlStripper:
    """``strip_control`` for streamed text: an escape sequence split across pieces is held back until it is whole."""

    _MAX_HELD = 64  # a longer "sequence" is not one: let it through (stripped as far as it is recognised)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        start = max(text.rfind("\x1b"), text.rfind("\x9b"))
        if start >= 0 and len(text) - start < self._MAX_HELD:
            tail = text[start:]
            match = _SEQUENCES.match(tail)
            complete = match is not None and match.end() == len(tail) and _is_closed(tail)
            if not complete:
                self._held, text = tail, text[:start]
        return strip_control(text)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return strip_control(held)


def _is_closed(seq: str) -> bool:
    """Whether an escape sequence that matches up to the end of the text cannot grow any more."""
    if seq.startswith("\x1b[") or seq.startswith("\x9b"):
        return "@" <= seq[-1] <= "~" and len(seq) > 2 - seq.startswith("\x9b")
    if len(seq) >= 2 and seq[1] in "]PX^_":
        return seq.endswith(("\x07", "\x1b\\", "\x9c"))
    return len(seq) >= 2 and "0" <= seq[-1] <= "~"
