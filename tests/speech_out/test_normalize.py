"""Text normalization: what reaches a TTS engine is words and plain punctuation only."""

from __future__ import annotations

import unicodedata

import pytest

from voicepipe.tts.normalize import normalize_text

CASES = [
    # numbers
    ("I have 3 cats.", "I have three cats."),
    ("It has 1,234 pages.", "It has one thousand two hundred and thirty four pages."),
    ("Pi is 3.14.", "Pi is three point one four."),
    ("It was -5 outside.", "It was minus five outside."),
    ("The 21st century.", "The twenty first century."),
    ("Pages 10-20.", "Pages ten to twenty."),
    ("Add 1/2 cup and 3/4 spoon.", "Add one half cup and three quarters spoon."),
    ("In 1990 we met.", "In nineteen ninety we met."),
    ("Music of the 1980s.", "Music of the nineteen eighties."),
    ("Room #3, No. 7.", "Room number three, number seven."),
    ("About ~5 minutes.", "About about five minutes."),
    # money, percent, time
    ("It costs $3.50.", "It costs three dollars fifty cents."),
    ("A $5k budget.", "A five thousand dollars budget."),
    ("Only €1 left.", "Only one euro left."),
    ("Up 50% today.", "Up fifty percent today."),
    ("Meet at 3:30 pm.", "Meet at three thirty p m."),
    ("Lunch at 12:00.", "Lunch at twelve o'clock."),
    ("At 9:05 am.", "At nine oh five a m."),
    # units
    ("It is 5 km away.", "It is five kilometers away."),
    ("Only 1 km left.", "Only one kilometer left."),
    ("It is 20°C now.", "It is twenty degrees Celsius now."),
    ("Weighs 2.5 kg.", "Weighs two point five kilograms."),
    ("Latency of 100 ms.", "Latency of one hundred milliseconds."),
    ("It has 16 GB of memory.", "It has sixteen gigabytes of memory."),
    ("It is 2x faster.", "It is two times faster."),
    # symbols and abbreviations
    ("Salt & pepper.", "Salt and pepper."),
    ("2+2=4", "two plus two equals four"),
    ("Use cats/dogs.", "Use cats or dogs."),
    ("You and/or me.", "You and or me."),
    ("Dr. Smith vs. Mr. Jones, e.g. today.", "Doctor Smith versus Mister Jones, for example today."),
    ("Email bob@example.com now.", "Email bob at example dot com now."),
    ("See https://www.example.org/a?b=1 for more.", "See example dot org for more."),
    # markdown leftovers
    ("**Bold** and *italic* and `code`.", "Bold and italic and code."),
    ("## Heading", "Heading"),
    ("- first item", "first item"),
    ("1. first step", "first step"),
    ("> quoted text", "quoted text"),
    ("See [the docs](http://x.com/a).", "See the docs."),
    ("| a | b |\n|---|---|\n| c | d |", "a, b, c, d"),
    # emoji and typography
    ("Great job 🎉🎉!", "Great job!"),
    ("Thumbs up 👍🏽 and keycap 1️⃣.", "Thumbs up and keycap one."),
    ("He said “hi” — then left…", 'He said "hi", then left...'),
    ("Café über naïve.", "Café über naïve."),
    # nothing speakable
    ("", ""),
    ("   ", ""),
    ("*** --- ###", ""),
    ("🙂🙃", ""),
    ("123", "one hundred and twenty three"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalization_table(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


NASTY = [
    "Price: $1,000,000.99 (≈ 50% off!) → buy @ store #5 ✅",
    "```python\nprint('hi')\n``` ~~gone~~ <tag> {x} [y] \\ ^ | _ ` ",
    "Temp ±2°F, 3×4÷2, x² ≥ 1 ≤ 3 ‰ § ¶ © ® ™ •",
    "Zero-width\u200bjoiner\u200d and \ufe0f selectors and \U0001f600\U0001f3fb.",
]
ALLOWED_PUNCTUATION = set(".,!?;:'\"-() ")


@pytest.mark.parametrize("text", NASTY)
def test_only_letters_and_plain_punctuation_reach_the_engine(text: str) -> None:
    out = normalize_text(text)
    bad = [ch for ch in out if not (unicodedata.category(ch)[0] in "LM" or ch in ALLOWED_PUNCTUATION)]
    assert not bad, f"{out!r} still has {bad}"
    assert not any(ch.isdigit() for ch in out)
    assert "  " not in out


def test_numbers_follow_the_language() -> None:
    assert normalize_text("J'ai 3 chats.", "fr-fr") == "J'ai trois chats."
    assert normalize_text("Ich habe 21 Katzen.", "de") == "Ich habe einundzwanzig Katzen."
