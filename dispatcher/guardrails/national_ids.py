"""National ids added after the sixth blind set: Mexico, Denmark, Norway, Finland, South Africa,
Switzerland, Chile, Greece, Austria; after the seventh: Romania, Czechia and Slovakia, Estonia and
Lithuania, nine-digit tax ids (Egypt, the US EIN), and words that name an id without its country.
All validated by python-stdnum.

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
from stdnum.cz import rc
from stdnum.dk import cpr
from stdnum.ee import ik
from stdnum.eg import tn
from stdnum.fi import hetu
from stdnum.gr import amka
from stdnum.mx import curp
from stdnum.no import fodselsnummer
from stdnum.ro import cnp
from stdnum.us import ein
from stdnum.za import idnr

from dispatcher.guardrails.findings import Finding

Validator = Callable[[str], bool]

# A South African id is 13 digits with a Luhn digit: a card number to the card detector, which keeps
# it unless these words say whose id it is.
SOUTH_AFRICAN_ID_WORDS = ("south africa", "suid-afrika", "rsa id", "sa id", "za id")

# Words that name someone's id without saying which country issued it ("national ID", "personal ID
# number", "citizen number", "الرقم القومي"): after them, a number any id below with a check digit
# accepts (identifiers.py), as after that id's own name.
GENERIC_ID_WORDS = (
    "national id", "id number", "id no.", "id-no", "id nr", "identity n", "identification n", "personal id",
    "personal number", "personal code", "citizen", "ausweisnummer", "personennummer", "numéro d'identi",
    "número de identi", "documento de identidad", "numero di identit", "numero identificativo", "identiteitsnummer",
    "persoonsnummer", "numer identyfikacyjny", "numer osobisty", "numer ewidencyjny", "kimlik n", "личный номер",
    "идентификационный номер", "номер удостоверения", "身份号码", "身份证号", "個人識別", "識別番号", "식별번호",
    "주민번호", "الرقم القومي", "رقم الهوية", "الرقم الشخصي", "पहचान संख्या", "पहचान नंबर",
)  # fmt: skip
# ...unless the number is an order's, an invoice's, a ticket's (also for phones: phones.py).
NOT_PERSONAL_WORDS = (
    "order", "invoice", "tracking", "reference", "ref ", "ref:", "ref.", "account", "ticket", "booking",
    "serial", "transaction", "pedido", "factura", "commande", "facture", "bestell", "rechnung", "auftrag",
    "ordine", "fattura", "zamówien", "faktur", "заказ", "счёт", "счет", "sipariş", "fatura", "订单", "注文",
    "주문", "طلب", "فاتورة", "ऑर्डर", "बिल",
)  # fmt: skip


# ...nor an organisation's id for someone ("student ID number", "employee ID number"): after
# "ID number", a random nine-digit number passes one of the checks below three times in ten.
_ISSUED_BY_OTHERS = (
    "student", "employee", "staff", "customer", "member", "user", "product", "device", "session", "request",
    "badge", "matrikel", "mitarbeiter", "kunden", "client", "cliente", "klant", "klient", "клиент", "сотрудник",
    "学生", "员工", "客户", "社員", "顧客", "학생", "직원", "고객", "موظف", "عميل", "طالب", "öğrenci", "müşteri",
)  # fmt: skip


def said_generic(lowered: str, start: int) -> bool:
    return (
        said_before(lowered, start, GENERIC_ID_WORDS)
        and not said_before(lowered, start, NOT_PERSONAL_WORDS)
        and not said_before(lowered, start, _ISSUED_BY_OTHERS)
    )


# Nine-digit tax ids, Egypt's (no check digit) and the US employer id (a prefix list): any nine digits
# nearly, so only after a word saying tax id, and never after a generic id word alone.
TAX_ID_WORDS = (
    "tax id", "tax number", "tax no", "tax registration", "tax identification", "employer identification",
    "ein:", "ein ", "الرقم الضريبي", "التسجيل الضريبي", "رقم ضريبي", "البطاقة الضريبية",
)  # fmt: skip


def _tax_id_ok(value: str) -> bool:
    return tn.is_valid(value) or ein.is_valid(value)


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
    # Romanian CNP: sex and century, birth date, county, sequence, a check digit (13 digits, as a card).
    (re.compile(r"(?<![\d-])[1-8]\d{12}(?![\d-])"), cnp.is_valid, ("cnp", "cod numeric personal", "codul numeric personal")),
    # Czech and Slovak birth number: a birth date (month + 50 for women), "/", a sequence; mod 11.
    (re.compile(r"(?<![\d/-])\d{6}/?\d{3,4}(?![\d/-])"), rc.is_valid, ("rodné číslo", "rodne cislo", "rodného čísla", "birth number")),
    # Estonian isikukood and Lithuanian asmens kodas: the same sex-and-century digit, date and check.
    (re.compile(r"(?<!\d)[1-6]\d{10}(?!\d)"), ik.is_valid, ("isikukood", "asmens kod", "personal code")),
    (re.compile(r"(?<![\d-])(?:\d{9}|\d{3}-\d{3}-\d{3}|\d{2}-\d{7})(?![\d-])"), _tax_id_ok, TAX_ID_WORDS),
)  # fmt: skip
# Ids that hold no check digit: a generic id word is not enough before them.
NO_CHECK_DIGIT: frozenset[Validator] = frozenset([cpr.is_valid, _tax_id_ok])


def ascii_words(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(word for word in words if word.isascii())


def mentions(lowered: str, words: tuple[str, ...], ascii_only: tuple[str, ...]) -> bool:
    """Whether one of `words` is in `lowered`. ASCII text (most prompts) is searched for the ASCII
    ones (`ascii_only`) alone: each substring test of 2,000 characters costs about a microsecond."""
    return any(word in lowered for word in (ascii_only if lowered.isascii() else words))


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


GENERIC_ID_ASCII = ascii_words(GENERIC_ID_WORDS)
