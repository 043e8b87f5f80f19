"""Reading "anterior" / "posterior" from the free text that cameras write.

Older exports (GE Millennium / Genie, many Philips and Mediso systems) carry no
coded view: the view shows only in ImageID, SeriesDescription or a private
element, as text such as ``"ANT"``, ``"WB ANT"``, ``"POSTERIOR"`` or ``"PST"``.
The same fields also hold text like ``"BONE 3H POST INJECTION"``, where
``POST`` means *after*, not *posterior*. :func:`view_from_label` therefore works
on words, not substrings, and refuses anything it cannot read without guessing.

Rules, applied to one text value:

1. The text is upper-cased, German umlauts and ``ß`` are spelled out
   (``ä`` -> ``AE``, ``früh`` -> ``FRUEH``, as cameras without umlauts write
   them) and other accents dropped; it is then split into words: runs of
   letters and runs of digits are separate words, everything else separates
   (``"ANT_WB"``, ``"WB-ANT"`` and ``"ANT1"`` all contain the word ``ANT``).
2. Anterior words: ``ANT``, ``ANTERIOR``, ``VENTRAL``, ``VORNE`` (German
   "front"); posterior words: ``POST``, ``POSTERIOR``, ``PST``, ``DORSAL``,
   ``HINTEN`` (German "back"). A word glued to ``WB`` (``ANTWB``, ``WBPOST``)
   counts too. Substrings never count: ``ANTIBODY``, ``POSTOP`` and
   ``VENTRALIS`` are not views. Laterality and phase words around them
   (``"R VENTRAL L FRUEH"``) do not matter.
3. ``POST`` (only the short, ambiguous form) is *temporal* and ignored when
   the next word is a procedure word (``INJECTION``, ``INJ``, ``VOID``,
   ``THERAPY``, ``OP``, ...) or a number (``POST 3H``), or when the previous
   word is a number or a time unit (``3H POST``, ``2 HRS POST``).
4. A label that names an oblique or lateral view (``OBL``, ``LAO``, ``RPO``,
   ``LAT``, German ``SCHRAEG``, ``SEITLICH``, ...), or a compound direction
   (``ANTERO``-posterior, ``POSTERO``-anterior, ``VENTRO``-dorsal), is not a
   pure anterior/posterior projection: no view.
5. A label that still names both views (``"ANT/POST"``, ``"ANT POST WB"``)
   describes a pair, not one image: no view.

The result is ``"anterior"``, ``"posterior"`` or ``None``; ``None`` means "this
text does not say", never "guess the other one".
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final, Literal

ViewName = Literal["anterior", "posterior"]

ANTERIOR: Final = "anterior"
POSTERIOR: Final = "posterior"

_ANTERIOR_WORDS: Final = frozenset({"ANT", "ANTERIOR", "VENTRAL", "VORNE"})
_POSTERIOR_WORDS: Final = frozenset({"POST", "POSTERIOR", "PST", "DORSAL", "HINTEN"})
# Words after "POST" that make it mean "after" (post injection, post void ...).
_TEMPORAL_FOLLOWERS: Final = frozenset(
    {
        "INJ", "INJECT", "INJECTED", "INJECTION", "INJEC", "IV",
        "VOID", "VOIDING", "MICTURITION", "MICT",
        "TREATMENT", "THERAPY", "TX", "RX", "RT", "RADIOTHERAPY", "CHEMO",
        "OP", "OPERATIVE", "OPERATION", "SURGERY", "SURG", "PROC", "PROCEDURE",
        "CONTRAST", "DOSE", "ADMIN", "ADMINISTRATION", "TRAUMA", "FX",
        "FRACTURE", "MEAL", "DELAY", "DELAYED", "EXERCISE", "STRESS",
    }
)
_TIME_UNITS: Final = frozenset(
    {"H", "HR", "HRS", "HOUR", "HOURS", "M", "MIN", "MINS", "MINUTE", "MINUTES", "D", "DAY", "DAYS"}
)
_NON_AP_VIEW_WORDS: Final = frozenset(
    {
        "OBL", "OBLIQUE", "LAO", "RAO", "LPO", "RPO", "LAT", "LATERAL", "LLAT", "RLAT",
        "SCHRAEG", "SCHRAG", "SEITLICH", "SEITL",
        "ANTERO", "POSTERO", "VENTRO", "DORSO", "AP", "PA",
    }
)
# German umlauts as written on keyboards without them; other accents are dropped.
_SPELLED_OUT: Final = str.maketrans({"Ä": "AE", "Ö": "OE", "Ü": "UE", "ß": "SS", "ẞ": "SS"})
_WORD_PATTERN: Final = re.compile(r"[A-Z]+|[0-9]+")


def _strip_wb(word: str) -> str:
    """``ANTWB`` / ``WBPOST`` -> ``ANT`` / ``POST``; other words unchanged."""
    for core in (*_ANTERIOR_WORDS, *_POSTERIOR_WORDS):
        if word in (core + "WB", "WB" + core):
            return core
    return word


def fold_text(text: str) -> str:
    """Upper-case ``text`` with umlauts spelled out and other accents dropped (rule 1)."""
    spelled = text.upper().translate(_SPELLED_OUT)
    decomposed = unicodedata.normalize("NFKD", spelled)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def label_words(text: str) -> list[str]:
    """Split a label into the words :func:`view_from_label` looks at (rule 1-2)."""
    return [_strip_wb(word) for word in _WORD_PATTERN.findall(fold_text(text))]


def _is_temporal_post(words: list[str], index: int) -> bool:
    """Rule 3: is ``words[index] == "POST"`` used as "after"?"""
    if words[index] != "POST":
        return False
    if index + 1 < len(words):
        follower = words[index + 1]
        if follower in _TEMPORAL_FOLLOWERS or follower.isdigit():
            return True
    if index > 0:
        previous = words[index - 1]
        if previous.isdigit() or previous in _TIME_UNITS:
            return True
    return False


def view_from_label(text: str | None) -> ViewName | None:
    """Read the view named by one free-text label, or ``None`` if it names none.

    Args:
        text: An ImageID, SeriesDescription, private-tag value or similar.

    Returns:
        ``"anterior"`` or ``"posterior"`` when the text names exactly one of
        them under the rules in this module's docstring; otherwise ``None``
        (no view word, a temporal ``POST``, an oblique/lateral view, or both).

    Examples:
        >>> view_from_label("WB ANT"), view_from_label("Posterior")
        ('anterior', 'posterior')
        >>> view_from_label("BONE SCAN POST INJECTION") is None
        True
        >>> view_from_label("ANT/POST") is None
        True
    """
    if not text:
        return None
    words = label_words(str(text))
    if any(word in _NON_AP_VIEW_WORDS for word in words):
        return None
    found: set[str] = set()
    for index, word in enumerate(words):
        if word in _ANTERIOR_WORDS:
            found.add(ANTERIOR)
        elif word in _POSTERIOR_WORDS and not _is_temporal_post(words, index):
            found.add(POSTERIOR)
    if len(found) != 1:
        return None
    return ANTERIOR if ANTERIOR in found else POSTERIOR
