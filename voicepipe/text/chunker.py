"""Streaming text -> speakable chunks for TTS.

``SentenceChunker`` takes the LLM's reply as it streams (``push``) and returns chunks ready to synthesize: the first one
early, at a clause boundary (comma, semicolon, colon, dash) once it is ``first_min_chars`` long, or, with
``first_max_words``, after that many words when no clause or sentence has ended by then (before the last conjunction or
preposition among them, if any: "...known | for its speed"), so the first audio starts sooner; later ones at sentence
ends, at least ``min_chars`` long (short sentences are merged); none longer than ``max_chars`` (split at the last clause
or space before it). ``flush`` returns the rest at the end of the turn.

Terminal escape sequences and control characters are removed first (``voicepipe.text.control``). Then
``SpeechCleaner`` removes what should not be spoken: ``<think>...</think>`` text (also when the tags
arrive split across pushes, and an unclosed ``<think>`` at the end), markdown (headers, bold/italics, inline code,
fenced code blocks with their content, links -> their text, list bullets, block quotes, rules, table borders) and
emoji.

Hand-written because none of the libraries we use does this: sentence splitters (nltk, pysbd, LiveKit's basic
tokenizer) split whole sentences of finished text, none emits a clause early, strips markdown and think text, or
guarantees what this does: the output depends only on the text, never on how it was split into pushes. That holds
because every decision (drop a markup character, cut a chunk) is taken only once the text that could change it has
arrived; until then the undecided tail is held back (usually one or two characters).
"""

from __future__ import annotations

import re

from voicepipe.llm.thinking import ThinkFilter
from voicepipe.text.control import ControlStripper

__all__ = ["SentenceChunker", "SpeechCleaner"]

# Emoji, pictographs, dingbats, flags, skin tones, variation selectors and the zero-width joiner of emoji sequences.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U0001fc00-\U0001ffff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0e\ufe0f\u200d\u20e3]"
)
_HEADER = re.compile(r"#{1,6}[ \t]")
_BULLET = re.compile(r"[-*+][ \t]")
_QUOTE = re.compile(r">[ \t]?")
_FENCE = re.compile(r"(```|~~~)")

# Titles and abbreviations after which a period never ends a sentence.
_ABBREVIATIONS = {
    *("mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "rev", "hon", "gen", "col", "lt", "sgt"),
    *("capt", "cmdr", "gov", "sen", "rep", "pres", "vs", "approx", "dept", "est", "fig", "figs", "vol", "vols", "ch"),
    *("sec", "eq", "ref", "refs", "al", "inc", "ltd", "co", "corp", "bros", "ave", "blvd", "rd"),
}
# Dotted abbreviations and initialisms: "e.g", "i.e", "a.m", "U.S", "Ph.D" (the final period is not part of the token).
_DOTTED = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")
_SENTENCE_PUNCT = ".!?…"
_LOOKAHEAD = 16  # the longest markup the cleaner must see whole ("###### ")
_CLOSERS = "\"')]}»”’"
# Words a long first chunk may be cut before: a phrase starts there, so the cut sounds like a breath, not a stumble.
_BREAK_BEFORE = {
    *("and", "but", "or", "so", "because", "since", "when", "while", "if", "that", "which", "who", "where", "whose"),
    *("to", "for", "with", "in", "on", "at", "from", "by", "as", "than", "after", "before", "until", "unless"),
    *("although", "though", "into", "about", "through", "without", "of", "over", "under", "like", "during"),
}
_FIRST_MIN_WORDS = 3  # a word-count cut leaves at least this many words in the first chunk
_OPENERS = "\"'([{«“‘"


class SpeechCleaner:
    """Streaming filter that drops think text, markdown and emoji, and collapses whitespace.

    ``feed(text)`` returns the clean text that is decided so far; ``finish()`` returns the rest. Newlines are kept
    (one per run) because the chunker treats a line break as a boundary. Fenced code blocks are dropped whole: code
    read aloud is noise.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buf = ""
        self._think = ThinkFilter()  # think text goes first, before any markup is looked at
        self._mode = "text"  # text | fence (skip the opening fence line) | code | url (skip a link target)
        self._url_depth = 0
        self._line_start = True
        self._prev = "\n"  # last raw character seen in text mode (for emphasis flanking)
        self._last_out = "\n"  # last character emitted (for whitespace collapsing)

    def feed(self, text: str) -> str:
        self._buf += self._think.feed(text)
        return self._scan(final=False)

    def finish(self) -> str:
        self._buf += self._think.flush()
        out = self._scan(final=True)
        self.reset()
        return out

    # -- scanner ---------------------------------------------------------------------------------------------------

    def _scan(self, final: bool) -> str:
        buf, i, out = self._buf, 0, []
        while i < len(buf):
            step = getattr(self, f"_step_{self._mode}")(buf, i, final, out)
            if step is None:  # undecided until more text arrives
                break
            i = step
        self._buf = buf[i:]
        return "".join(out)

    def _emit(self, out: list[str], text: str) -> None:
        for ch in text:
            if ch == "\n":
                if self._last_out != "\n":
                    out.append("\n")
                    self._last_out = "\n"
            elif ch in " \t\r":
                if self._last_out not in " \n":
                    out.append(" ")
                    self._last_out = " "
            else:
                out.append(ch)
                self._last_out = ch

    def _step_fence(self, buf: str, i: int, final: bool, out: list[str]) -> int | None:
        end = buf.find("\n", i)
        if end < 0:
            return len(buf) if final else None
        self._mode, self._line_start = "code", True
        return end + 1

    def _step_code(self, buf: str, i: int, final: bool, out: list[str]) -> int | None:
        end = buf.find("\n", i)
        if end < 0 and not final:
            return None  # a partial line may be the closing fence
        line = buf[i : end if end >= 0 else len(buf)]
        if _FENCE.match(line.lstrip()):
            self._mode, self._line_start, self._prev = "text", True, "\n"
            self._emit(out, "\n")
        return end + 1 if end >= 0 else len(buf)

    def _step_url(self, buf: str, i: int, final: bool, out: list[str]) -> int | None:
        for j in range(i, len(buf)):
            if buf[j] == "(":
                self._url_depth += 1
            elif buf[j] == ")":
                self._url_depth -= 1
                if self._url_depth == 0:
                    self._mode = "text"
                    return j + 1
        return len(buf)

    def _step_text(self, buf: str, i: int, final: bool, out: list[str]) -> int | None:
        rest = buf[i : i + _LOOKAHEAD]  # enough to decide any markup here (runs of markup are measured on buf)
        ch = rest[0]
        if ch in " \t\r\n":
            if ch == "\n":
                self._line_start = True
            self._emit(out, ch)
            self._prev = ch
            return i + 1
        if self._line_start:
            step = self._line_markup(rest, final)
            if step is None or step > 0:
                return None if step is None else i + step
            self._line_start = False
        if ch in "*_-=~":  # emphasis, strikethrough, rules ("---")
            run = _run_length(buf, i, ch)
            if i + run == len(buf) and not final:
                return None
            nxt = buf[i + run] if i + run < len(buf) else " "
            return i + self._markup_run(ch, run, nxt, out)
        if ch == "`":  # inline code: keep the code, drop the backticks
            self._prev = "`"
            return i + _run_length(buf, i, "`")
        if ch == "[":
            self._prev = ch
            return i + 1
        if ch == "]":
            if len(rest) == 1 and not final:
                return None
            if rest.startswith("]("):
                self._mode, self._url_depth = "url", 1
                return i + 2
            self._prev = ch
            return i + 1
        if ch == "!" and not final and len(rest) == 1:
            return None
        if ch == "!" and rest.startswith("!["):  # image: keep its alt text
            return i + 1
        if ch == "|" or _EMOJI.match(ch):  # table cell borders and emoji separate words: "good👍job"
            self._emit(out, " ")
            return i + 1
        self._emit(out, ch)
        self._prev = ch
        return i + 1

    def _line_markup(self, rest: str, final: bool) -> int | None:
        """At a line start: length of markup to drop (fence, header, bullet, quote), 0 if none, None if undecided."""
        if _FENCE.match(rest):
            self._mode = "fence"
            return 3
        if not final and _could_be_line_markup(rest):
            return None
        for pattern in (_HEADER, _BULLET, _QUOTE):
            m = pattern.match(rest)
            if m:
                return m.end()
        return 0

    def _markup_run(self, ch: str, run: int, nxt: str, out: list[str]) -> int:
        """Handle a run of ``ch`` followed by ``nxt``: emphasis markers and rules are dropped, the rest kept."""
        prev = self._prev
        self._prev = ch
        if run >= 3:  # "---", "***", "===": a rule or decoration
            self._emit(out, " ")
        elif _is_literal(ch, run, prev, nxt):
            self._emit(out, ch * run)
        return run  # otherwise emphasis or strikethrough markers: dropped


def _is_literal(ch: str, run: int, prev: str, nxt: str) -> bool:
    """Is a run of ``*_-=~`` (short of a rule) plain text rather than emphasis or strikethrough markup?"""
    return (
        ch in "-="  # hyphens, "--force", "a == b"
        or (prev.isspace() and nxt.isspace())  # "2 * 3"
        or (ch == "_" and prev.isalnum() and nxt.isalnum())  # snake_case
        or (ch == "*" and prev.isdigit() and nxt.isdigit())  # "2*3"
        or (ch == "~" and run == 1)  # "~5 minutes"
    )


def _could_be_line_markup(rest: str) -> bool:
    """True if ``rest`` (all the text there is) could still grow into a header, bullet, quote or fence."""
    return bool(re.fullmatch(r"#{1,6}|[-*+>]|`{1,2}|~{1,2}", rest))


class SentenceChunker:
    """Streaming splitter of reply text into speakable chunks (cleaned by ``SpeechCleaner`` first).

    ``push(text)`` returns the chunks completed by ``text``; ``flush()`` returns the rest at the end of the turn and
    resets for the next one; ``reset()`` drops everything (after an interruption). The chunks are the same however
    the text was split into pushes.
    """

    def __init__(
        self, first_min_chars: int = 16, min_chars: int = 40, max_chars: int = 240, first_max_words: int | None = None
    ) -> None:
        for name, value in (("first_min_chars", first_min_chars), ("min_chars", min_chars)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1 (got {value})")
        if first_max_words is not None and first_max_words < _FIRST_MIN_WORDS:
            raise ValueError(f"first_max_words must be at least {_FIRST_MIN_WORDS} or None (got {first_max_words})")
        if max_chars < max(first_min_chars, min_chars, 20):
            raise ValueError(
                f"max_chars ({max_chars}) must be at least 20 and at least first_min_chars and min_chars; raise it"
            )
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_max_words = first_max_words
        self._cleaner = SpeechCleaner()
        self._control = ControlStripper()
        self.reset()

    def reset(self) -> None:
        """Drop all pending text and start a new turn."""
        self._cleaner.reset()
        self._control = ControlStripper()
        self._buf = ""
        self._first = True
        self._sentence_start = True  # the buffer starts a sentence (so "1. " there is a list number)

    def push(self, text: str) -> list[str]:
        """Add reply text; return the chunks it completes."""
        self._buf += self._cleaner.feed(self._control.feed(text))
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the turn: return every remaining chunk and reset."""
        self._buf += self._cleaner.feed(self._control.finish()) + self._cleaner.finish()
        chunks = self._drain(final=True)
        self.reset()
        return chunks

    # -- cutting ---------------------------------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[str]:
        chunks = []
        while True:
            start = len(self._buf) - len(self._buf.lstrip())
            if start == len(self._buf):
                break
            cut = self._find_cut(self._buf, start, final)
            if cut is None:
                if not final:
                    break
                cut = len(self._buf)
            text = _speakable(self._buf[start:cut])
            self._buf = self._buf[cut:]
            self._sentence_start = _ends_sentence(text)
            if any(c.isalnum() for c in text):  # nothing speakable (a lone "—"): drop it
                chunks.append(text)
                self._first = False
        return chunks

    def _find_cut(self, buf: str, start: int, final: bool) -> int | None:
        """End index of the next chunk in ``buf[start:]``, or None if the text so far cannot decide it."""
        limit = start + self.max_chars
        i = start
        while i < len(buf) and i < limit:
            ch = buf[i]
            if ch == "\n":
                if self._first or i - start >= self.min_chars:
                    return i
                i += 1
                continue
            if ch in _SENTENCE_PUNCT:
                end = i + _run_length(buf, i, _SENTENCE_PUNCT)
                end += _run_length(buf, end, _CLOSERS)
                if end > limit:
                    break
                needed = self._first or end - start >= self.min_chars
                verdict = self._sentence_end(buf, start, i, end, final) if needed else False
                if verdict is None:
                    return None
                if verdict:
                    return end
                i = end
                continue
            if self._first and self.first_max_words and ch in " \t\r" and i > start and not buf[i - 1].isspace():
                cut = _word_cut(buf, start, i, self.first_max_words)
                if cut is not None:
                    return cut
            if self._first and i + 1 - start >= self.first_min_chars:
                end = _clause_end(buf, i)
                if end is None:
                    return None if not final else len(buf)
                if end:
                    return end
            i += 1
        if len(buf) <= limit:
            return None  # the chunk may still end at a sentence boundary
        return _cap(buf, start, limit, self.min_chars)

    def _sentence_end(self, buf: str, start: int, i: int, end: int, final: bool) -> bool | None:
        """Does the punctuation ``buf[i:end]`` end a sentence? None while undecided."""
        if end == len(buf):
            return True if final else None
        if not buf[end].isspace():  # "3.14", "e.g.x", "example.com/a"
            return False
        punct = buf[i:end].rstrip(_CLOSERS)
        if ".." in punct or "…" in punct:  # an ellipsis pauses, it does not end the sentence
            return False
        if punct == ".":
            token_start = start + re.search(r"\S*$", buf[start:i]).start()
            token = buf[token_start:i].lstrip(_OPENERS)
            if token.lower() in _ABBREVIATIONS or _DOTTED.fullmatch(token):
                return False
            if len(token) == 1 and token.isupper():  # an initial: "John F. Kennedy"
                return False
            if token.isdigit() and len(token) <= 3 and self._starts_sentence(buf, token_start):
                return False  # a numbered list item: "1. Preheat the oven."
        nxt = end + _run_length(buf, end, " \t\r")
        if nxt == len(buf):
            return True if final else None
        return not buf[nxt].islower()  # "etc. and more": a lower-case word goes on the same sentence

    def _starts_sentence(self, buf: str, pos: int) -> bool:
        """Does ``buf[pos:]`` start a line or sentence? (The buffer keeps the whitespace after the last cut.)"""
        before = buf[:pos].rstrip(" \t\r")
        if not before:
            return self._sentence_start
        return before[-1] in "\n:" + _SENTENCE_PUNCT


def _run_length(buf: str, i: int, chars: str) -> int:
    n = 0
    while i + n < len(buf) and buf[i + n] in chars:
        n += 1
    return n


def _clause_end(buf: str, i: int) -> int | None:
    """If ``buf[i]`` ends a clause, the index after it; 0 if not; None if the next character has not arrived."""
    ch = buf[i]
    if ch == "—":
        return i + 1
    if ch in ",;:" or (ch in "-–" and i > 0 and buf[i - 1] == " "):
        if i + 1 == len(buf):
            return None
        return i + 1 if buf[i + 1].isspace() else 0
    return 0


def _word_cut(buf: str, start: int, i: int, max_words: int) -> int | None:
    """Cut a first chunk ``buf[start:i]`` of ``max_words`` words: before its last break word, else at ``i``."""
    words = list(re.finditer(r"\S+", buf[start:i]))
    if len(words) < max_words:
        return None
    for word in reversed(words[_FIRST_MIN_WORDS:max_words]):
        if word.group().strip(_OPENERS).lower() in _BREAK_BEFORE:
            return start + word.start()
    return start + words[max_words - 1].end()


def _cap(buf: str, start: int, limit: int, min_chars: int) -> int:
    """Cut an over-long chunk in ``buf[start:limit]``: at its last clause boundary, else its last space."""
    window = buf[start : limit + 1]
    clauses = [m.end() for m in re.finditer(r"[,;:—–](?=\s)", window)]
    if clauses and clauses[-1] >= min_chars:
        return start + clauses[-1]
    space = max(window.rfind(" "), window.rfind("\n"))
    return start + space if space > 0 else limit


def _speakable(text: str) -> str:
    """Turn a raw chunk into TTS text: line breaks become commas or spaces, spaces collapse, no space before punct."""
    text = re.sub(r"(\w)[ \t]*\n\s*", r"\1, ", text.strip())
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" +([,.;:!?…])", r"\1", text)
    return text.strip()


def _ends_sentence(text: str) -> bool:
    text = text.rstrip(_CLOSERS)
    return not text or text[-1] in _SENTENCE_PUNCT + ":"
