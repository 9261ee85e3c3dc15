"""Names of regions and stations: one written form (NFC, trimmed) and the Vietnamese order.

The order is the dictionary's: name by name, syllable by syllable; within a syllable the
letters first, in the Vietnamese alphabet (a ă â b c d đ e ê g h i k l m n o ô ơ p q r s t u
ư v x y), then the tone (none, huyền, hỏi, ngã, sắc, nặng). So "Ba Vì" comes before "Bà Rịa"
and "Ý Yên" before "Yên Lãng". Case and the place of the tone mark ("Hoá", "Hóa") do not
matter. Numbers compare by value ("Phường 9" before "Phường 10").

Written here rather than taken from ICU: PyICU is only a source package on PyPI that needs
ICU's headers and a C++ compiler on every server, Debian's python3-icu serves the system
Python and not the service's, and ICU's Vietnamese collation compares tones only after all
the letters of the whole name ("Bà Rịa" before "Ba Vì"), not syllable by syllable.
"""

from __future__ import annotations

import unicodedata

# Vietnamese letters in order; f, j, w and z (in foreign names) after their Latin neighbours.
_ALPHABET = ["a", "ă", "â", "b", "c", "d", "đ", "e", "ê", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o",
             "ô", "ơ", "p", "q", "r", "s", "t", "u", "ư", "v", "w", "x", "y", "z"]
_LETTER_RANK = {letter: rank for rank, letter in enumerate(_ALPHABET)}
# Combining marks that make a letter of its own (ă â ê ô ơ ư): breve, circumflex, horn.
_LETTER_MARKS = {"\u0306", "\u0302", "\u031b"}
# Tone marks, in order: huyền, hỏi, ngã, sắc, nặng (no mark: 0).
_TONE_RANK = {"\u0300": 1, "\u0309": 2, "\u0303": 3, "\u0301": 4, "\u0323": 5}

# Kinds of character, in the order they sort: numbers, then letters, then anything else.
_NUMBER, _LETTER, _OTHER = 0, 1, 2

SortKey = tuple[tuple[tuple[tuple[int, int], ...], tuple[int, ...]], ...]


def normalise_name(value: str) -> str:
    """The one written form of a name: NFC (what a Vietnamese keyboard may send decomposed is
    composed) without surrounding spaces."""
    return unicodedata.normalize("NFC", value).strip()


def _syllable_key(word: str) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    letters: list[tuple[int, int]] = []
    tones: list[int] = []
    chars = unicodedata.normalize("NFD", word)
    i = 0
    while i < len(chars):
        char = chars[i]
        i += 1
        if char.isdecimal():
            digits = char
            while i < len(chars) and chars[i].isdecimal():
                digits += chars[i]
                i += 1
            letters.append((_NUMBER, int(digits)))
            continue
        if unicodedata.combining(char):
            if char in _TONE_RANK:
                tones.append(_TONE_RANK[char])
            else:
                letters.append((_OTHER, ord(char)))
            continue
        letter = char
        while i < len(chars) and chars[i] in _LETTER_MARKS:
            letter += chars[i]
            i += 1
        letter = unicodedata.normalize("NFC", letter)
        rank = _LETTER_RANK.get(letter)
        letters.append((_LETTER, rank) if rank is not None else (_OTHER, ord(letter[0])))
    return tuple(letters), tuple(tones)


def vietnamese_key(name: str) -> SortKey:
    """Sort key of a name in Vietnamese order (see the module's description)."""
    return tuple(_syllable_key(word) for word in unicodedata.normalize("NFC", name).casefold().split())


def same_name(a: str, b: str) -> bool:
    """Whether two names are the same name: equal in NFC, case aside (and repeated spaces and
    the old or new place of a tone mark, which do not make another name)."""
    return vietnamese_key(a) == vietnamese_key(b)
