"""National ids added after the sixth blind set: Mexico, Denmark, Norway, Finland, South Africa,
Switzerland, Chile, Greece, Austria, validated by python-stdnum.

Same rule as identifiers.py: a bare run of digits (a date and a check digit pass one order number in
ten to a hundred) counts only after its name; a shape no other number has, with a check digit
(Switzerland's 756.xxxx.xxxx.xx, Mexico's CURP), stands on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from stdnum.at import vnr
from stdnum.ch import ssn as ahv
from stdnum.cl import rut
from stdnum.dk import cpr
from stdnum.fi import hetu
from stdnum.gr import amka
from stdnum.mx import curp
from stdnum.no import fodselsnummer
from stdnum.za import idnr

from dispatcher.guardrails.findings import Finding

Validator = Callable[[str], bool]

# A South African id is 13 digits with a Luhn digit: a card number to the card detector, which keeps
# it unless these words say whose id it is.
SOUTH_AFRICAN_ID_WORDS = ("south africa", "suid-afrika", "rsa id", "sa id", "za id")

# (pattern, validator, words one of which must stand within 40 characters before it, or None).
NATIONAL: Sequence[tuple[re.Pattern[str], Validator, tuple[str, ...] | None]] = (
    # Danish CPR: a birth date and a sequence, no check digit since 2007.
    (re.compile(r"(?<![\d-])\d{6}-?\d{4}(?![\d-])"), cpr.is_valid, ("cpr",)),
    (re.compile(r"(?<![\d-])\d{6} ?\d{5}(?![\d-])"), fodselsnummer.is_valid, ("fødselsnummer", "fodselsnummer", "fødselsnr", "personnummer")),
    # Finnish henkilötunnus: birth date, century sign, sequence, a check character of 31.
    (re.compile(r"(?i)(?<![\d-])\d{6}[-+a-fu-y]\d{3}[0-9a-y](?![0-9a-z-])"), hetu.is_valid, ("henkilötunnus", "hetu", "personbeteckning", "finnish personal identity")),
    (re.compile(r"(?<![\d-])\d{13}(?![\d-])"), idnr.is_valid, SOUTH_AFRICAN_ID_WORDS),
    (re.compile(r"(?<![\d.])756\.\d{4}\.\d{4}\.\d{2}(?!\d|\.\d)"), ahv.is_valid, None),
    (re.compile(r"(?<![\d.])756\d{10}(?!\d)"), ahv.is_valid, ("ahv", "avs", "sozialversicherung", "social security", "social insurance")),
    # Chilean RUT: a mod-11 check digit only, so even written as printed it needs its name.
    (re.compile(r"(?i)(?<![\d.])\d{1,2}\.?\d{3}\.?\d{3}-[\dk](?![0-9a-z])"), rut.is_valid, ("rut", "run ", "run:", "rol único")),
    (re.compile(r"(?<!\d)\d{11}(?!\d)"), amka.is_valid, ("amka", "αμκα")),
    # Austrian social insurance number: serial, check digit, birth date (4 + 6 digits).
    (re.compile(r"(?<![\d-])[1-9]\d{3} ?\d{6}(?![\d-])"), vnr.is_valid, ("sozialversicherungsnummer", "svnr", "sv-nr", "versicherungsnummer", "social insurance number")),
)  # fmt: skip


def said_before(lowered: str, start: int, words: tuple[str, ...]) -> bool:
    before = lowered[max(0, start - 40) : start]
    return any(word in before for word in words)


def is_south_african_id(lowered: str, start: int, digits: str) -> bool:
    """A 13-digit number that the words before it call a South African id, and that is one."""
    return said_before(lowered, start, SOUTH_AFRICAN_ID_WORDS) and idnr.is_valid(digits)


# Mexican CURP: four letters, birth date, sex, state, three consonants, a check digit. Letters around
# few digits, so it is looked for in the whole text; upper case, as it is printed.
_CURP = re.compile(r"(?<![0-9A-Za-z])[A-Z]{4}\d{6}[HMX][A-Z]{5}[0-9A-Z]\d(?![0-9A-Za-z])")


def curps(text: str) -> Iterator[Finding]:
    """Callers look for the digits first (pii.py's hint): the scan costs 30 µs on 2,000 letters."""
    for m in _CURP.finditer(text):
        if curp.is_valid(m.group()):
            yield Finding("national_id", m.start(), m.end())
