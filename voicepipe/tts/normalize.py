"""Text normalization before synthesis: what the engine gets is only words and plain punctuation.

Phonemizers read raw text badly: espeak-ng spells an emoji's Unicode name ("slightly smiling face"), reads "**" as
"star star", and Kokoro's vocabulary silently drops what it cannot map. So every chunk goes through
``normalize_text`` first: markdown leftovers, URLs, e-mail addresses, currency, percentages, units, ordinals, times,
decimals, fractions and symbols become words (numbers through ``num2words``, in the configured language), emoji and
other symbols are removed, and a final whitelist keeps only letters, marks, spaces and plain punctuation. A chunk that
ends up with no letters is returned as ``""`` and the TTS stage skips it.

The rewrite rules are hand-written because no library covers this mix (num2words only spells numbers); the unit and
symbol words are English, numbers follow ``language``.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from functools import partial

from voicepipe.text.control import strip_control

__all__ = ["normalize_text"]

# -- markdown leftovers -------------------------------------------------------------------------------------------------

_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*")
_MD_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~|`+)(?=\S)(.+?)(?<=\S)\1")
_MD_UNDERSCORE_EMPHASIS = re.compile(r"(?<![\w])_(?=\S)(.+?)(?<=\S)_(?![\w])")
_MD_LINE_PREFIX = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>+[ \t]*|[-*+•][ \t]+|\d+[.)][ \t]+)", re.MULTILINE)
_MD_RULE = re.compile(r"^[ \t]*(?:[-*_=][ \t]*){3,}$", re.MULTILINE)
_MD_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE)

# -- web ----------------------------------------------------------------------------------------------------------------

_URL = re.compile(r"\b(?:https?://|www\.)([^\s/?#]+)[^\s]*", re.IGNORECASE)
_EMAIL = re.compile(r"\b([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)\b")

# -- abbreviations (their dots would also end a sentence for the phonemizer) ----------------------------------------

_ABBREVIATIONS = {
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
    "vs.": "versus",
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Ms.": "Miz",
    "Dr.": "Doctor",
    "Prof.": "Professor",
    "approx.": "approximately",
}
_ABBREVIATION = re.compile(
    r"(?<![\w.])("
    + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS, key=len, reverse=True))
    + r")(?=[\s,;:!?)]|$)",
)

# -- numbers ------------------------------------------------------------------------------------------------------------

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "", "")}  # fmt: skip
_CURRENCY = re.compile(r"([$€£¥])\s?(" + _NUM + r")(?:\s?(k|K|million|billion|thousand)\b)?")
_PERCENT = re.compile(r"(-?)(" + _NUM + r")\s?%")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_TIME = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b(?:\s?([AaPp])\.?[Mm]\b)?")
_FRACTION = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?![\d/])")
_RANGE = re.compile(r"(?<![\w.])(" + _NUM + r")\s?[-–]\s?(" + _NUM + r")(?!\w|\.\d)")
_DECADE = re.compile(r"\b(1[1-9]|20)(\d)0s\b")
_NUMBER_SIGN = re.compile(r"\b(?:No|no|Nr)\.\s?(?=\d)")
_NEGATIVE = re.compile(r"(?<![\w.])[-−](?=\d)")
_NUMBER = re.compile(_NUM)
# Phone numbers are read digit by digit, groups apart: "555-1234", "(555) 123-4567", "555.123.4567", "+1 555-123-4567".
_PHONE = re.compile(
    r"(?<![\w.,$€£¥-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[.-])?\d{3}-\d{4}(?![\w-]|\.\d)"
    r"|(?<![\w.,-])\d{3}\.\d{3}\.\d{4}(?![\w-]|\.\d)"
)

# Units are read only right after a number ("5 km"), so the words "m" or "s" elsewhere are left alone.
_UNITS: dict[str, tuple[str, str]] = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "kg": ("kilogram", "kilograms"),
    "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"),
    "l": ("liter", "liters"),
    "L": ("liter", "liters"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
    "ms": ("millisecond", "milliseconds"),
    "s": ("second", "seconds"),
    "sec": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "h": ("hour", "hours"),
    "hr": ("hour", "hours"),
    "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "KB": ("kilobyte", "kilobytes"),
    "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "W": ("watt", "watts"),
    "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"),
    "x": ("times", "times"),
}
_UNIT = re.compile(
    r"(?<![\w.])(-?)(" + _NUM + r")\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?![\w°])"
)  # fmt: skip

# -- symbols ------------------------------------------------------------------------------------------------------------

_SYMBOL_WORDS = {
    "&": " and ",
    "@": " at ",
    "+": " plus ",
    "=": " equals ",
    "×": " times ",
    "÷": " divided by ",
    "±": " plus or minus ",
    "≈": " about ",
    "~": " about ",
    "<": " less than ",
    ">": " greater than ",
    "≤": " at most ",
    "≥": " at least ",
    "→": " to ",
}
_SYMBOL = re.compile(r"\s*([&@+=×÷±≈<>≤≥→])\s*")
_TILDE_NUMBER = re.compile(r"~\s?(?=\d)")
_HASH_NUMBER = re.compile(r"#(?=\d)")
_AND_OR = re.compile(r"\band/or\b", re.IGNORECASE)
_SLASH_WORDS = re.compile(r"(?<=[^\W\d_])/(?=[^\W\d_])")

# What may reach the engine besides letters, marks and spaces.
_KEEP_PUNCTUATION = set(".,!?;:'\"-()")
_PUNCT_MAP = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": ", ", "\u2026": "."}


def normalize_text(text: str, language: str = "en-us") -> str:
    """Rewrite ``text`` into words and plain punctuation for a TTS engine; ``""`` when nothing speakable is left."""
    lang = _num2words_lang(language)
    text = strip_control(text)  # before anything else: "\x1b[31m" must not become "31 meters"
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_PUNCT_MAP.get(ch, ch) for ch in text)
    text = _markdown(text)
    text = _URL.sub(lambda m: " " + _spell_domain(m.group(1)) + " ", text)
    text = _EMAIL.sub(lambda m: f" {_spell_domain(m.group(1))} at {_spell_domain(m.group(2))} ", text)
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group(1)], text)
    text = _numbers(text, lang)
    text = _symbols(text)
    text = _whitelist(text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    text = re.sub(r"([.,!?;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"^[\s.,!?;:\-)]+", "", text)
    text = re.sub(r"[\s,;:\-(]+$", "", text)
    if not any(ch.isalpha() for ch in text):
        return ""
    return text


def _num2words_lang(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0] or "en"


def _markdown(text: str) -> str:
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_CODE_FENCE.sub(" ", text)
    text = _MD_TABLE_SEPARATOR.sub(" ", text)
    text = _MD_RULE.sub(" ", text)
    text = _MD_LINE_PREFIX.sub("", text)
    for _ in range(2):  # nested emphasis such as ***x*** or **`x`**
        text = _MD_EMPHASIS.sub(r"\2", text)
    text = _MD_UNDERSCORE_EMPHASIS.sub(r"\1", text)
    text = re.sub(r"[ \t]*\|[ \t]*", ", ", text)  # table cells
    return text


def _spell_domain(domain: str) -> str:
    parts = [p for p in re.split(r"[.]", domain.lower().removeprefix("www.")) if p]
    return " dot ".join(re.sub(r"[-_+]", " ", p) for p in parts)


def _words(number: int | Decimal, lang: str, **kwargs: str) -> str:
    from num2words import num2words

    try:
        words = num2words(number, lang=lang, **kwargs)
    except NotImplementedError:
        words = num2words(number, lang="en", **kwargs)
    return words.replace(",", "")


def _cardinal(number: str, lang: str) -> str:
    """Spell a number as written: digits after the decimal point one by one ("three point one four")."""
    number = number.replace(",", "")
    whole, _, frac = number.partition(".")
    if frac and lang != "en":
        return _words(Decimal(number), lang).replace("-", " ")
    out = _words(int(whole), lang)
    if frac:
        out += " point " + " ".join(_words(int(d), lang) for d in frac)
    return out.replace("-", " ")


def _plural(number: str) -> bool:
    return number.replace(",", "") not in ("1", "1.0")


def _phone(match: re.Match[str], lang: str) -> str:
    """ "555-1234" -> "five five five, one two three four"."""
    plus = "plus " if match.group(0).startswith("+") else ""
    groups = re.findall(r"\d+", match.group(0))
    return " " + plus + ", ".join(" ".join(_words(int(d), lang) for d in group) for group in groups) + " "


def _numbers(text: str, lang: str) -> str:
    cardinal = partial(_cardinal, lang=lang)
    text = _PHONE.sub(lambda m: _phone(m, lang), text)
    text = _CURRENCY.sub(lambda m: _currency(m, lang), text)
    text = _PERCENT.sub(lambda m: ("minus " if m.group(1) else "") + cardinal(m.group(2)) + " percent", text)
    text = _ORDINAL.sub(lambda m: _words(int(m.group(1)), lang, to="ordinal").replace("-", " "), text)
    text = _TIME.sub(lambda m: _time(m, lang), text)
    text = _FRACTION.sub(lambda m: _fraction(m, lang), text)
    text = _TILDE_NUMBER.sub("about ", text)
    text = _HASH_NUMBER.sub("number ", text)
    text = _NUMBER_SIGN.sub("number ", text)
    text = _DECADE.sub(lambda m: _decade(m, lang), text)
    text = _UNIT.sub(lambda m: _unit(m, lang), text)
    text = _RANGE.sub(lambda m: f"{cardinal(m.group(1))} to {cardinal(m.group(2))}", text)
    text = _NEGATIVE.sub("minus ", text)
    # Padded with spaces so "x2" or "mp3" do not glue the word to the number.
    text = _NUMBER.sub(lambda m: " " + _plain_number(m.group(0), lang) + " ", text)
    return text


def _decade(match: re.Match[str], lang: str) -> str:
    """ "1990s" -> "nineteen nineties"."""
    year = _words(int(match.group(0)[:-1]), lang, to="year").replace("-", " ")
    return year[:-1] + "ies" if year.endswith("y") else year + "s"


def _plain_number(number: str, lang: str) -> str:
    """A bare number; four-digit ones from 1100 to 1999 read as years ("nineteen ninety"), the rest as cardinals."""
    if lang == "en" and re.fullmatch(r"1[1-9]\d\d", number):
        return _words(int(number), lang, to="year").replace("-", " ")
    return _cardinal(number, lang)


def _currency(match: re.Match[str], lang: str) -> str:
    symbol, amount, scale = match.groups()
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    amount = amount.replace(",", "")
    if scale:
        scale_word = "thousand" if scale in ("k", "K") else scale
        return f"{_cardinal(amount, lang)} {scale_word} {many}"
    whole, _, cents = amount.partition(".")
    out = f"{_cardinal(whole, lang)} {one if whole == '1' else many}"
    if cents and sub_one and int(cents[:2].ljust(2, "0")):
        c = int(cents[:2].ljust(2, "0"))
        out += f" {_cardinal(str(c), lang)} {sub_one if c == 1 else sub_many}"
    return out


def _time(match: re.Match[str], lang: str) -> str:
    hour, minute, ampm = match.groups()
    out = _cardinal(str(int(hour)), lang)
    if minute == "00":
        out += "" if ampm else " o'clock"
    elif minute.startswith("0"):
        out += " oh " + _cardinal(minute[1], lang)
    else:
        out += " " + _cardinal(minute, lang)
    if ampm:
        out += " a m" if ampm.lower() == "a" else " p m"
    return out


def _fraction(match: re.Match[str], lang: str) -> str:
    num, den = int(match.group(1)), int(match.group(2))
    if den == 0 or lang != "en":
        return f"{_cardinal(str(num), lang)} over {_cardinal(str(den), lang)}"
    if den == 2:
        name = "half" if num == 1 else "halves"
    elif den == 4:
        name = "quarter" if num == 1 else "quarters"
    else:
        name = _words(den, lang, to="ordinal").replace("-", " ") + ("" if num == 1 else "s")
    return f"{_cardinal(str(num), lang)} {name}"


def _unit(match: re.Match[str], lang: str) -> str:
    sign, number, unit = match.groups()
    one, many = _UNITS[unit]
    return ("minus " if sign else "") + _cardinal(number, lang) + " " + (many if _plural(number) else one)


def _symbols(text: str) -> str:
    text = _AND_OR.sub("and or", text)
    text = _SLASH_WORDS.sub(" or ", text)
    return _SYMBOL.sub(lambda m: _SYMBOL_WORDS[m.group(1)], text)


def _whitelist(text: str) -> str:
    """Keep letters, combining marks, spaces and plain punctuation; everything else (emoji, symbols) becomes a space."""
    out: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] == "L" or ch in _KEEP_PUNCTUATION:
            out.append(ch)
        elif cat in ("Mn", "Mc") and out and out[-1].isalpha() and not 0xFE00 <= ord(ch) <= 0xFE0F:
            out.append(ch)  # accents on a letter; variation selectors and keycap marks go
        elif ch.isspace() or cat[0] in "SPZC":
            out.append(" ")
        elif cat[0] == "N":
            out.append(" ")  # digits of other scripts, roman numerals: unreadable after the rules above
    return "".join(out)
