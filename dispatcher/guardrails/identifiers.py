"""Numeric identifiers: payment cards, IBANs, SSNs and other national ids (phones: phones.py).

Patterns find candidates in normalized text (see normalize.py: full-width and other scripts' digits
are already ASCII); well-kept libraries decide which are real: `schwifty` for IBANs (every registry
country, BBAN structure, mod-97), `python-stdnum` for national ids and the Luhn check. Hand-written only where no library
does the job, each with the reason beside it.

Digit groups may be separated by spaces, dots, dashes, slashes or a line break, as people write
them and as text wrapping leaves them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

from schwifty import IBAN, registry
from schwifty.exceptions import SchwiftyException
from stdnum import numdb, verhoeff
from stdnum.be import nn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.jp import in_ as mynumber
from stdnum.kr import rrn
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.pt import nif
from stdnum.ru import inn
from stdnum.se import personnummer
from stdnum.tr import tckimlik
from stdnum.util import isdigits

from dispatcher.guardrails import national_ids as more_ids
from dispatcher.guardrails.findings import Finding
from dispatcher.guardrails.national_ids import said_before as _said_before

# One separator between digit groups: a space, dot, dash or slash, or a line break with its indent.
SEP = r"(?:[ \t]?[.\-/][ \t]?|[ \t]|[ \t]*\r?\n[ \t]*)"
_NOT_DIGITS = str.maketrans("", "", " \t\r\n.-/()+_")


def digits_of(text: str) -> str:
    """The digits of a candidate whose only other characters are separators."""
    return text.translate(_NOT_DIGITS)


# --- payment cards ------------------------------------------------------------------------------
# How cards are written: one run of 13-19 digits, or 4-4-4-4(-3), 4-6-5 (Amex), 4-6-4 (Diners) with
# one kind of separator throughout (an underscore too: "4111_1111_1111_1111", as form fields and
# file names that allow no spaces leave it) (a line break may stand for it where text was wrapped; one or two
# spaces: "6011  3211  7858  8988" is how a card is copied from a justified PDF).
_WRAP = r"[ \t]*\r?\n[ \t]*"
_CARD = re.compile(
    rf"(?<![\d-])(?:\d{{13,19}}"
    rf"|\d{{4}}([ \t]?[.\-/_][ \t]?|[ \t]{{1,2}}|{_WRAP})\d{{4}}(?:\1|{_WRAP})\d{{4}}(?:\1|{_WRAP})\d{{4}}(?:(?:\1|{_WRAP})\d{{3}})?"
    rf"|\d{{4}}([ \t]?[.\-/_][ \t]?|[ \t]{{1,2}}|{_WRAP})\d{{6}}(?:\2|{_WRAP})\d{{4,5}})(?![\d-])"
)
_FIRST_GROUP_END = re.compile(r"\d+")
# Network prefixes: no library keeps them (stdnum has Luhn only); Visa, Mastercard, Maestro, Amex,
# Diners, Discover, JCB, UnionPay.
_CARD_PREFIX = re.compile(r"^(?:4|5[0-9]|2[2-7]|3[47]|3[0689]|6|35)")
_TRIM_LAST_GROUP = re.compile(r"\D+\d{3}$")


# A card number wrapped once by a notes app or a narrow column ("44422549\n28394213"): two runs with
# one line break between them, split anywhere. Any two runs of 13-19 digits in all pass Luhn one time
# in ten and a network prefix often, so this form needs a card word just before it.
_CARD_SPLIT = re.compile(rf"(?<![\d-])\d{{4,15}}{_WRAP}\d{{4,15}}(?![\d-])")
CARD_WORDS = (
    "card", "carte", "tarjeta", "carta", "cartão", "cartao", "kaart", "kart", "карт",  # kart: de, pl, tr
    "卡", "カード", "카드", "بطاق", "कार्ड", "visa", "mastercard", "amex",
)  # fmt: skip


def cards(text: str) -> Iterator[Finding]:
    lowered = ""  # lower-cased only where a card or a line break calls for it: most windows have none
    for found in _cards_as_written(text):
        lowered = lowered or text.lower()
        if more_ids.is_south_african_id(lowered, found.start, digits_of(text[found.start : found.end])):
            continue  # a national id (national_ids.py), not a card
        yield found
    if "\n" in text and any(word in (lowered := lowered or text.lower()) for word in CARD_WORDS):
        for m in _CARD_SPLIT.finditer(text):
            if _said_before(lowered, m.start(), CARD_WORDS) and _is_card(digits_of(m.group())):
                yield Finding("card", m.start(), m.end())


def _cards_as_written(text: str) -> Iterator[Finding]:
    at = 0
    while (m := _CARD.search(text, at)) is not None:
        end = m.end()
        if not _is_card(digits_of(m.group())):
            # 4-4-4-4 followed by another number ("card 4111 ... 1111 123"): the card without it.
            trimmed = _TRIM_LAST_GROUP.search(m.group()) if m.end() - m.start() > 19 else None
            if trimmed is None or not _is_card(digits_of(m.group()[: trimmed.start()])):
                # Maybe the card starts at the next group ("ref 1234 4111 1111 1111 1111").
                at = m.start() + _FIRST_GROUP_END.match(text, m.start()).end() - m.start()  # type: ignore[union-attr]
                continue
            end = m.start() + trimmed.start()
        yield Finding("card", m.start(), end)
        at = end


def _is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn_ok(digits)


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(digits: str) -> bool:
    """The Luhn check, inline: stdnum's (generic over alphabets) costs 4 µs a call, this 1 µs, and
    on adversarial input ("4111 4111 4111 ...") it runs once per digit group."""
    total = sum(int(d) for d in digits[-1::-2]) + sum(_LUHN_DOUBLED[int(d)] for d in digits[-2::-2])
    return total % 10 == 0


# --- IBAN ---------------------------------------------------------------------------------------
# Any case ("de89 3704 ..."), groups of four separated or not; schwifty knows each country's length.
# A line break may stand between two groups where the text was wrapped ("ES17 2100 0418\n4406 ...").
_IBAN = re.compile(r"(?i)(?<![a-z0-9])[a-z]{2}\d{2}(?:(?:[ \-]|[ \t]*\r?\n[ \t]*)?[a-z0-9]){10,30}")


_IBAN_SEPARATORS = str.maketrans("", "", " -\t\r\n")
# Where an IBAN may start: two check digits after two letters (the scan skips ahead to digits).
_IBAN_CHECK = re.compile(r"[0-9][0-9](?<=[A-Za-z]{2}[0-9][0-9])")


def ibans(text: str) -> Iterator[Finding]:
    """Scans the whole text: an IBAN with letters in it ("TR39 0013 70C2 AICB ...") may hold no
    cluster of digits."""
    done = 0
    for check in _IBAN_CHECK.finditer(text):
        if check.start() - 2 < done:
            continue
        m = _IBAN.match(text, check.start() - 2)
        if m is None:
            continue
        candidate = m.group()
        compact = candidate.translate(_IBAN_SEPARATORS).upper()
        # The pattern may run into the next words: take exactly the country's length.
        length = _iban_length(compact[:2])
        if length is None or len(compact) < length:
            continue
        try:
            IBAN(compact[:length])
        except (SchwiftyException, ValueError):
            continue
        end, taken = m.start(), 0
        while taken < length:
            if text[end] not in " -\t\r\n":
                taken += 1
            end += 1
        if end < len(text) and text[end].isascii() and text[end].isalnum():
            continue  # part of a longer token (a Korean particle glued on, "…07로", is not)
        yield Finding("iban", m.start(), end)
        done = end


@lru_cache(maxsize=512)
def _iban_length(country: str) -> int | None:
    try:
        return registry.get_iban_spec(country).iban_length
    except (SchwiftyException, ValueError):
        return None


# --- US social security numbers -----------------------------------------------------------------
# Hand-written: stdnum's us.ssn refuses the published sample numbers (078-05-1120...), which a masker
# must still hide; the issuing rules themselves are these three.
# Wrapped text may break the line beside a dash or dot ("123-45-\n6789", "359-10\n-2169") or, as for
# cards, where a space was ("078 05\n1120"); at most once: with no checksum to vouch for it, numbers on
# three lines ("123\n45\n6789") are a list. Each break is tried only after three or two digits, and
# its indentation is one run of blanks: linear.
_SSN = re.compile(
    rf"(?<![\d-])(?!000|666|9\d\d)\d{{3}}(?:(?:{_WRAP})?([-./])(?:{_WRAP})?| |{_WRAP})(?!00)\d{{2}}"
    rf"(?(1)(?:{_WRAP})?\1(?:{_WRAP})?|(?: |{_WRAP}))(?!0000)\d{{4}}(?![\d-])"
)
_SSN_BARE = re.compile(
    # "SSN: 409995099", and said in a sentence: "my SSN is 409995099", "Mijn SSN is ...".
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}(?:(?:is|ist|es|est|era|was)\W{1,3})?"
    r"((?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})\b"
)


# Nine bare digits named a US social security number in another language ("mi número de seguro
# social de EE. UU. es …", "номер социального страхования …"): the name within 40 characters before.
# The other countries' social security numbers these words also name are longer (France 15 digits,
# Spain 12, Mexico 11), so nine digits under the SSN's issuing rules are the American one.
SSN_WORDS = (
    "seguro social", "seguridad social", "sécurité sociale", "securite sociale", "previdenza sociale",
    "sicurezza sociale", "segurança social", "sociale zekerheid", "ubezpieczenia społecznego",
    "ubezpieczenia spolecznego", "социального страхования", "социального обеспечения", "社会安全", "社會安全",
    "社会保障", "ソーシャルセキュリティ", "사회보장", "الضمان الاجتماعي", "सामाजिक सुरक्षा", "sosyal güvenlik",
    "sozialversicherung",
)  # fmt: skip
_SSN_ASCII = more_ids.ascii_words(SSN_WORDS)
_SSN_NINE = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4}(?![\d-])")


def ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        if m.group().count("\n") <= 1:
            yield Finding("ssn", m.start(), m.end())
    lowered = text.lower()
    if "ssn" in lowered or "social security" in lowered:
        for m in _SSN_BARE.finditer(text):
            yield Finding("ssn", m.start(1), m.end(1))
    if more_ids.mentions(lowered, SSN_WORDS, _SSN_ASCII):
        for m in _SSN_NINE.finditer(text):
            if _said_before(lowered, m.start(), SSN_WORDS):
                yield Finding("ssn", m.start(), m.end())


# --- other national ids ---------------------------------------------------------------------------
# (pattern, validator, words one of which must stand within 40 characters before it, or None).
# The words are plain lower-case substrings: `in` runs at C speed where a regular expression with
# IGNORECASE cost 120 ms over 256,000 characters of digits.
# Formats with a date and a check digit (Chinese, Korean, Italian, Brazilian when punctuated) stand on
# their own; bare 9-12 digit ids collide with order numbers unless their name is next to them.
Validator = Callable[[str], bool]


def _resident_id_ok(candidate: str) -> bool:
    """A Chinese resident id: stdnum's check digit, birth date and county table, without the condition
    of its `cn.ric.is_valid` that the county code existed in the birth year. The code is where the
    holder was registered when the id was issued (from 1984), so ids of everyone born before their
    county's code (most date from 1983) fail it: 330106… (Hangzhou Xihu, 1983-) of a 1965 birth."""
    number = ric.compact(candidate.replace(" ", "").replace("-", ""))
    if len(number) != 18 or not isdigits(number[:-1]) or number[-1] != ric.calc_check_digit(number):
        return False
    try:
        ric.get_birth_date(number)
    except ValidationError:
        return False
    return any("county" in props for _, props in numdb.get("cn/loc").info(number[:6]))


_NATIONAL: Sequence[tuple[re.Pattern[str], Validator, tuple[str, ...] | None]] = (
    # A DNI is also written with thousands dots ("13.567.288-W"), which stdnum does not strip.
    (re.compile(r"(?i)(?<![0-9a-z.])(?:\d{8}|\d{2}\.\d{3}\.\d{3})[ -]?[a-z](?![0-9a-z])"), lambda v: dni.is_valid(v.replace(".", "")), None),
    (re.compile(r"(?i)(?<![0-9a-z])[xyz]-?\d{7}-?[a-z](?![0-9a-z])"), nie.is_valid, None),
    # Canadian SIN only next to its name: 3-3-3 digits are as often a Spanish or French phone number
    # ("Llámame al 612 345 678" passes Luhn one time in ten).
    (re.compile(r"(?<![\d-])\d{3}([ -])\d{3}\1\d{3}(?![\d-])"), lambda v: v[0] not in "08" and luhn_ok(digits_of(v)) and sin.is_valid(v), ("sin", "social insurance", "assurance sociale", "nas ", "nas:")),
    # Not three groups of a longer grouped number (a 16-digit card that fails Luhn is no Aadhaar).
    (re.compile(r"(?<![0-9A-Za-z-])(?<!\d )[2-9]\d{3} \d{4} \d{4}(?![0-9A-Za-z-])(?! \d)"), lambda v: verhoeff.checksum(digits_of(v)) == 0 and aadhaar.is_valid(v), None),
    (re.compile(r"(?<![0-9A-Za-z-])[2-9]\d{3}-\d{4}-\d{4}(?![0-9A-Za-z-])"), aadhaar.is_valid, ("aadhar", "aadhaar", "आधार", "uidai")),
    (re.compile(r"(?<![0-9A-Za-z-])[2-9]\d{11}(?![0-9A-Za-z-])"), aadhaar.is_valid, ("aadhar", "aadhaar", "आधार", "uidai")),
    (re.compile(r"(?i)(?<![0-9a-z])[12] ?\d{2} ?(?:0[1-9]|1[0-2]) ?(?:\d{2}|2[ab]) ?\d{3} ?\d{3} ?\d{2}(?![0-9a-z])"), nir.is_valid, None),
    (re.compile(r"(?<![\d.])\d{3}\.\d{3}\.\d{3}-\d{2}(?!\d|\.\d)"), cpf.is_valid, None),
    # Also grouped as region, birth date and sequence ("440305 19830711 7737"), which stdnum does not strip.
    (re.compile(r"(?i)(?<![\d-])\d{6}([ -]?)\d{8}\1\d{3}[\dx](?![\d-]|[a-z])"), _resident_id_ok, None),
    (re.compile(r"(?<![\d-])\d{6}-\d{7}(?![\d-])"), rrn.is_valid, None),
    (re.compile(r"(?<!\d)\d{11}(?!\d)"), cpf.is_valid, ("cpf",)),
    (re.compile(r"(?<!\d)\d{11}(?!\d)"), pesel.is_valid, ("pesel",)),
    (re.compile(r"(?<!\d)\d{11}(?!\d)"), tckimlik.is_valid, ("tc ", "t.c.", "tckn", "kimlik")),
    # Also in pairs ("65 35 90 82 40 6"); "Steuerliche Identifikationsnummer" is its name on the tax letter.
    (re.compile(r"(?<!\d)(?:\d{2} ?\d{3} ?\d{3} ?\d{3}|\d{2}(?: \d{2}){4} \d)(?!\d)"), idnr.is_valid, ("steuer-id", "steuerid", "steueridentifikation", "identifikationsnummer", "idnr")),
    # Belgian national number: as printed (birth date, sequence, mod-97 check) it stands on its own.
    (re.compile(r"(?<![\d.-])\d{2}\.\d{2}\.\d{2}-\d{3}\.\d{2}(?![\d-]|\.\d)"), nn.is_valid, None),
    (re.compile(r"(?<![\d.-])\d{6}[ -]?\d{3}[ .-]?\d{2}(?![\d-]|\.\d)"), nn.is_valid, ("rijksregister", "registre national", "numéro national", "numero national", "nationaal nummer", "insz", "niss", "national number", "البلجيك")),
    # Portuguese NIF, Swedish personnummer (a date and a Luhn digit), Russian INN (10 digits, or 12 with
    # two check digits): bare runs that one order number in ten to a hundred passes, so only after their name.
    (re.compile(r"(?<![\d-])(?:\d{9}|\d{3} \d{3} \d{3})(?![\d-])"), nif.is_valid, ("nif", "contribuinte", "número fiscal", "numero fiscal", "identificação fiscal")),
    (re.compile(r"(?<![\d-])(?:\d{2})?\d{6}[- ]?\d{4}(?![\d-])"), personnummer.is_valid, ("personnummer", "personnr", "pers.nr", "samordningsnummer", "personal identity number")),
    (re.compile(r"(?<![\d-])(?:\d{12}|\d{10})(?![\d-])"), inn.is_valid, ("инн", "inn ", "inn:", "taxpayer identification number", "идентификационный номер налогоплательщика")),
    (re.compile(r"(?<!\d)\d{4}[ .]?\d{2}[ .]?\d{3}(?!\d)"), bsn.is_valid, ("bsn", "burgerservicenummer", "sofinummer")),
    (re.compile(r"(?<!\d)\d{4}[ -]?\d{4}[ -]?\d{4}(?!\d)"), mynumber.is_valid, ("マイナンバー", "個人番号", "my number", "mynumber")),
    *more_ids.NATIONAL,
)  # fmt: skip


def national_ids(text: str) -> Iterator[Finding]:
    lowered = text.lower()
    generic = more_ids.mentions(lowered, more_ids.GENERIC_ID_WORDS, more_ids.GENERIC_ID_ASCII)
    for pattern, valid, context in _NATIONAL:
        # A word naming an id of no country stands for each one's name, except where a bare number
        # has no check digit to vouch for it.
        by_generic = generic and valid not in more_ids.NO_CHECK_DIGIT
        if context is not None and not by_generic and not any(word in lowered for word in context):
            continue
        for m in pattern.finditer(text):
            named = context is None or _said_before(lowered, m.start(), context)
            if not named and not (by_generic and more_ids.said_generic(lowered, m.start())):
                continue
            if valid(m.group()):
                yield Finding("national_id", m.start(), m.end())


# Italian codice fiscale: letters around few digits, so it is looked for in the whole text.
_CODICE_FISCALE = re.compile(r"(?i)(?<![0-9a-z])[a-z]{6}\d{2}[a-z]\d{2}[a-z]\d{3}[a-z](?![0-9a-z])")
_CODICE_FISCALE_HINT = re.compile(r"[0-9]{2}[A-Za-z][0-9]{2}[A-Za-z][0-9]{3}")


def fiscal_codes(text: str) -> Iterator[Finding]:
    if _CODICE_FISCALE_HINT.search(text):
        for m in _CODICE_FISCALE.finditer(text):
            if codicefiscale.is_valid(m.group().upper()):
                yield Finding("national_id", m.start(), m.end())


# UK National Insurance numbers: no library validates them; the prefix rules are HMRC's.
_NINO = re.compile(
    r"(?i)\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_NINO_HINT = re.compile(r"[0-9][0-9] ?[0-9][0-9] ?[0-9][0-9] ?[A-Da-d]\b")


def ninos(text: str) -> Iterator[Finding]:
    if _NINO_HINT.search(text):
        for m in _NINO.finditer(text):
            if m.group()[:2].isupper() or m.group()[:2].islower():
                yield Finding("national_id", m.start(), m.end())
