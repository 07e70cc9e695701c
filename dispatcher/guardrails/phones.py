"""Phone numbers in free text: patterns find candidates, `phonenumbers` (Google's libphonenumber
metadata) decides which are real in the configured regions. Numbers written the national way need a
word saying "phone" near them, or the grouping their country writes them in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

import phonenumbers

from dispatcher.guardrails.findings import Finding
from dispatcher.guardrails.national_ids import NOT_PERSONAL_WORDS, ascii_words, mentions
from dispatcher.guardrails.national_ids import said_before as _said_before

_PHONE = re.compile(
    r"(?<![0-9A-Za-z_+])(?:"
    r"(?:\+|00)\d{1,3}[ .\-/]?(?:\(0?\d{1,4}\)[ .\-/]?)?\d{1,4}(?:[ .\-/]?\d{2,4}){1,5}"  # international
    # (415) 555-2671, (030) 1234 5678, and Russia's trunk 8 before it: 8 (912) 368-60-71
    r"|(?:8 ?)?\(0?\d{2,5}\)[ .\-]?\d{2,4}(?:[ .\-]?\d{2,4}){1,2}"
    r"|\d{3}([.\-])\d{3}\1\d{4}"  # 555-123-4567
    r"|0\d{1,5}(?:[ .\-/]\d{2,8}){1,4}"  # national with a trunk 0: 030 1234567, 081234 56847
    # The trunk 8 of Russia, Belarus and Kazakhstan before a mobile's ten digits: 8-912-345-67-89
    r"|8[ .\-]\d{3}[ .\-]?\d{3}[ .\-]?\d{2}[ .\-]?\d{2}"
    r"|0\d{8,11}"  # national, unseparated
    r")(?![0-9A-Za-z_-]|\.\d)"
)
# Numbers without a trunk 0 (Chinese mobiles "131 2345 6510", Indian "98765 43210"): only after a
# word saying "phone".
_PHONE_GROUPED = re.compile(r"(?<![0-9A-Za-z_+])[1-9]\d{1,4}(?:[ .\-]?\d{2,5}){1,3}(?![0-9A-Za-z_-]|\.\d)")
# A word saying "phone" next to a national-format number, in the languages the injection detector
# knows (a bare "030 12345678" could be anything).
PHONE_WORDS = (
    "phone", " tel", "tel.", "tel:", "telef", "téléph", "mobil", "móvil", "cell", "call", "fax", "whatsapp",
    "text me", "reach me", "contact", "kontakt", "handy", "ruf", "anruf", "appel", "portable", "llam", "llám", "chiam",
    "cellulare", "ligue", "celular", "bel me", "bellen", "komórk", "stacjonarn", "телеф", "звон", "моб", "電話",
    "电话", "手机", "携帯", "전화", "휴대", "هاتف", "جوال", "اتصل", "फ़ोन", "फोन", "मोबाइल", "arayın", "cep",
    "me liga", "拨打", "致电", "mera number", "naya number", "hotline", "helpline", "switchboard", "centralino",
    "centralita", "santral", "dzwo", "座机", "固话", "固定电话",
)  # fmt: skip
# The word "number" alone says less: a number valid in a region counts after it only when written as
# that country groups it ("numer 12 345 67 89"), or as one run with the trunk 0 ("number 07700900123"),
# and not when an order's, an invoice's, a ticket's ("رقم الطلب هو 55-8812-3390").
NUMBER_WORDS = (
    "number", "numer", "número", "numero", "nummer", "номер", "numara", "号码", "號碼", "番号", "번호", "رقم", "नंबर",
)  # fmt: skip

_ANY_NUMBER_WORDS = PHONE_WORDS + NUMBER_WORDS
_ANY_NUMBER_ASCII = ascii_words(_ANY_NUMBER_WORDS)


def _said_number(lowered: str, start: int) -> bool:
    return _said_before(lowered, start, NUMBER_WORDS) and not _said_before(lowered, start, NOT_PERSONAL_WORDS)


_NO_DIGITS = str.maketrans("", "", "0123456789")


def _digit_count(raw: str) -> int:
    # translate() runs in C; a generator over the characters was a tenth of a PII-dense prompt's cost.
    return len(raw) - len(raw.translate(_NO_DIGITS))


def _said_after(lowered: str, end: int, words: tuple[str, ...]) -> bool:
    """A phone word right after the number ("… è 312 345 0694, chiamala"): 20 characters, one clause."""
    return any(word in lowered[end : end + 20] for word in words)


def phones(text: str, regions: tuple[str, ...]) -> Iterator[Finding]:
    taken = -1
    lowered = text.lower()
    for m in _PHONE.finditer(text):
        raw = m.group()
        if not 7 <= _digit_count(raw) <= 15:
            continue
        international = raw.startswith(("+", "00"))
        context = _said_before(lowered, m.start(), PHONE_WORDS) or (
            raw[0] == "0" and raw.isdigit() and _said_number(lowered, m.start())
        )
        if _is_phone(raw, ("ZZ", *regions) if international else regions, context):
            yield Finding("phone", m.start(), m.end())
            taken = m.end()
    if mentions(lowered, _ANY_NUMBER_WORDS, _ANY_NUMBER_ASCII):
        for m in _PHONE_GROUPED.finditer(text):
            if m.start() < taken or not 8 <= _digit_count(m.group()) <= 12:
                continue
            # A phone word and either the country's own grouping or groups of three or more digits,
            # as people write them ("Llámame al 612 345 678"): "extension 666-12-3456" is not one.
            # After "number", the country's own grouping only.
            plain_groups = all(len(g) >= 3 for g in re.findall(r"\d+", m.group()))
            near = _said_before(lowered, m.start(), PHONE_WORDS) or _said_after(lowered, m.end(), PHONE_WORDS)
            if not near and _said_number(lowered, m.start()):
                near, plain_groups = True, False
            if near and _is_phone(m.group(), regions, plain_groups):
                yield Finding("phone", m.start(), m.end())


@lru_cache(maxsize=4096)
def _is_phone(raw: str, regions: tuple[str, ...], context: bool) -> bool:
    """Valid in one of `regions` (libphonenumber's metadata); a national number without a word
    saying "phone" must also be grouped the way that country writes it (03-1234-5678 in Japan)."""
    international = raw.startswith(("+", "00"))
    groups = [len(g) for g in re.findall(r"\d+", raw)]
    for region in regions:
        try:
            number = phonenumbers.parse(raw, None if region == "ZZ" else region)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        if international or context:
            return True
        written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        if len(groups) > 1 and [len(g) for g in re.findall(r"\d+", written)] == groups:
            return True
    return False
