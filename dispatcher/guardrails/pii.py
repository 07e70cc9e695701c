"""PII detectors: patterns find candidates, checksums and rules keep the real ones (secrets: credentials.py).

Detection runs on the normalized text (normalize.py: full-width digits, invisible characters,
homoglyphs) and every finding is mapped back to the exact span of the original, so masking replaces
what was there. Numeric identifiers (cards, IBANs, national ids) are in identifiers.py, phones in phones.py, and
run only around digit clusters; e-mail, IP and secret detectors scan the whole text behind cheap
pre-checks, so a prompt without digits, `@` or the right prefixes costs almost nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterator

from dispatcher.guardrails import credentials, identifiers, national_ids, phones
from dispatcher.guardrails.findings import Finding, non_overlapping
from dispatcher.guardrails.national_ids import ascii_words, mentions
from dispatcher.guardrails.normalize import normalize
from schemas.policy import DEFAULT_PHONE_REGIONS, PII_KINDS

Detector = Callable[[str], Iterator[Finding]]


# --- e-mail -------------------------------------------------------------------------------------
# Unicode letters are allowed on both sides: internationalized addresses (JÖRG@BÜCHER.DE, RFC 6531).
# Python's \w has no combining marks, without which Indic scripts cannot spell a word (the vowel
# signs and virama of उदाहरण.परीक्षा): _M adds those of the scripts from Devanagari to Sinhala and Thai.
_M = "\u0300-\u036f\u0900-\u0dff\u0e00-\u0e7f"
_EMAIL = re.compile(
    rf"(?<![\w.+{_M}-])[^\W_][\w.%+{_M}-]{{0,63}}@[^\W_](?:[\w{_M}-]{{0,62}}\.)+"
    rf"(?:[^\W\d_](?:[^\W\d_]|[{_M}]){{1,23}}|xn--[a-z0-9-]{{1,59}})(?![\w{_M}-])"
)


_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _is_local(ch: str) -> bool:
    return ch in _LOCAL or (
        ch > "\x7f" and (ch.isalnum() or "\u0300" <= ch <= "\u036f" or "\u0900" <= ch <= "\u0e7f")
    )


# "scheme://user:" just before a would-be address: it is a URL's password and host (a secret).
_URL_USERINFO = re.compile(r"://[^\s:/@]{1,64}:\Z")


def _emails(text: str) -> Iterator[Finding]:
    # Try the pattern only where an address before an "@" can begin: where the run of local-part
    # characters starts, or just after a "%" in it (the only one that satisfies the lookbehind). Searching the window around each "@" instead
    # cost 5 µs a character on "a@a@a@...".
    at = text.find("@")
    last_dot = text.rfind(".")  # an address has a dot after its "@": none left, no address left
    done = 0
    while at != -1 and at < last_dot:
        begin = max(done, at - 64)
        first = at
        while first > begin and _is_local(text[first - 1]):
            first -= 1
        starts = [first, *(i + 1 for i in range(first, at) if text[i] == "%")]
        end_pos = min(len(text), at + 256)
        for start in starts:
            m = _EMAIL.match(text, start, end_pos)
            if m is not None:
                if not _URL_USERINFO.search(text, max(0, start - 96), start):
                    yield Finding("email", m.start(), m.end())
                done = m.end()
                break
        at = text.find("@", max(at + 1, done))


# "john dot doe at example dot com", "jdoe [at] example [dot] org", "jane(at)example(dot)de", and the
# at-sign's name in other languages: "ät" (de), "arobase" (fr), "arroba" (es, pt), "chiocciola" (it),
# "małpa" (pl), "собака" (ru). At least one written-out separator, and a plain " at " only with a
# written-out " dot ": "I work at example.com" is not an address. "ät" is also Swedish for "eat", so it
# too needs a written-out dot; the other names stand for "@" by themselves, but only between a local
# part and a domain with a known top-level domain ("la chiocciola è un mollusco", "моя собака" are not).
# Also "apenstaartje" (nl), "艾特" (zh), "アットマーク" (ja), "골뱅이" (ko), and "et" (tr), which is
# French for "and": like "at", it needs a written-out dot and a local part with a dot or digit in it.
# Domains and top-level domains may be Cyrillic or Chinese ("почта-москва точка рф", "公司 (点) 中国").
# No library reads obfuscated addresses, hence by hand.
_AT_NAME = r"(?:arobase|arroba|chiocciola|ma[łl]pa|собака|apenstaartje|艾特|アットマーク|골뱅이)"
# "at" spelled in Arabic and Devanagari letters ("آت", "एट"), as Arabic and Hindi speakers read an
# address out: a transliteration, so it too needs a written-out dot (spelled the same way: "دوت", "डॉट").
_AT_SPELLED = r"(?:at|ät|et|آت|ات|एट)"
_AT_WORD = rf"(?:{_AT_SPELLED}|{_AT_NAME})"
# (?<!\s): a match starts where a run of blanks does, not again at each of its blanks; without it
# "dot" and 100,000 spaces took 54 s (each start scanned the rest of the run).
_AT = re.compile(rf"(?i)(?<!\s)(?:\s*[\[(<{{]\s*(?:{_AT_WORD}|@)\s*[\])>}}]\s*|\s+{_AT_WORD}\s+)")
_DOT_WORD = r"(?:dot|punkt|point|punto|ponto|punt|kropka|nokta|точка|点|ドット|닷|دوت|نقطة|डॉट)"
_DOT = rf"(?:\s*[\[(<{{]\s*{_DOT_WORD}\s*[\])>}}]\s*|\s+{_DOT_WORD}\s+|\.)"
# Top-level domains in other scripts (the IDN country codes of the languages read here): the whole
# address may be in that script ("지훈 골뱅이 회사 닷 한국", "مبيعات [at] شركة [dot] مصر").
_IDN_TLDS = ("рф", "укр", "бел", "қаз", "срб", "中国", "中國", "香港", "台灣", "台湾", "新加坡", "한국", "日本",
             "مصر", "السعودية", "امارات", "الاردن", "قطر", "المغرب", "تونس", "الجزائر", "عمان", "بھارت", "भारत", "ไทย",
             "ελ", "ею")  # fmt: skip
_DOMAIN = re.compile(
    rf"(?i)([^\W_][\w-]{{0,62}}(?:{_DOT}[^\W_][\w-]{{0,62}}){{0,3}}){_DOT}([a-z]{{2,6}}(?![a-z0-9_])"
    rf"|(?:{'|'.join(_IDN_TLDS)})(?![\w{_M}]))"
)
_LOCAL_BEFORE = re.compile(rf"(?i)(?:[^\W_][\w+-]{{0,63}}{_DOT})*[^\W_][\w+-]{{0,63}}$")
_WRITTEN = re.compile(rf"(?i)[\[(<{{]\s*(?:{_AT_WORD}|{_DOT_WORD})\s*[\])>}}]|\s(?:{_DOT_WORD}|{_AT_NAME})\s")
_TLDS = frozenset(
    [
        "com", "org", "net", "edu", "gov", "mil", "int", "info", "biz", "io", "co", "ai", "app", "dev", "me",
        "uk", "us", "ca", "au", "nz", "ie", "de", "at", "ch", "fr", "be", "nl", "lu", "es", "pt", "it", "pl",
        "cz", "sk", "hu", "ro", "bg", "gr", "se", "no", "dk", "fi", "is", "ee", "lv", "lt", "ru", "ua", "by",
        "tr", "cn", "jp", "kr", "in", "br", "mx", "ar", "cl", "eu", "asia", "ae", "sa", "eg",
    ]
) | frozenset(_IDN_TLDS)  # fmt: skip
_ADDRESS_LIKE_LOCAL = re.compile(rf"(?i)\s{_DOT_WORD}\s|[\[(<{{]{_DOT_WORD}|[\d._+-]")
_OBFUSCATED_HINTS = (
    "dot", "punkt", "point", "punt", "ponto", "kropka", "nokta", "точка", "at)", "at]", "at}", "at>",
    "ät)", "ät]", "ät}", "ät>", "arobase", "arroba", "chiocciola", "małpa", "malpa", "собака", "apenstaartje",
    " et ", "艾特", "アットマーク", "골뱅이", "دوت", "نقطة", "डॉट",
)  # fmt: skip
_OBFUSCATED_ASCII = ascii_words(_OBFUSCATED_HINTS)


_SPELLED_AT = frozenset(["at", "et", "آت", "ات", "एट"])


def _obfuscated_emails(text: str) -> Iterator[Finding]:
    lowered = text.lower()
    if not mentions(lowered, _OBFUSCATED_HINTS, _OBFUSCATED_ASCII):
        return
    for at in _AT.finditer(text):
        domain = _DOMAIN.match(text, at.end(), min(len(text), at.end() + 300))
        if domain is None or domain.group(2).lower() not in _TLDS:
            continue
        local = _LOCAL_BEFORE.search(text, max(0, at.start() - 200), at.start())
        if local is None:
            continue
        span = text[local.start() : domain.end()]
        if not _WRITTEN.search(span):
            continue
        if at.group().strip().lower() in _SPELLED_AT and not _ADDRESS_LIKE_LOCAL.search(local.group()):
            continue  # "I work at example dot com": a plain "at" after a plain word is speech
        yield Finding("email", local.start(), domain.end())


def _all_emails(text: str) -> Iterator[Finding]:
    yield from _emails(text)
    yield from _obfuscated_emails(text)


# --- IP addresses -------------------------------------------------------------------------------
# A network in CIDR notation ("192.168.0.0/16") is not anyone's address.
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d|/\d)")
# After it, a letter of another script may be glued on (a Korean particle: "…:776b였습니다").
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z_:])")


_IPV4_HINT = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]")
_VERSION_WORDS = (
    "version", "build", "release", "versión", "versione", "versão", "versie", "wersj", "верси", "sürüm",
    "版本", "バージョン", "버전",
)  # fmt: skip


# Addresses that are the same on every machine or home network name no one: the loopback range
# ("localhost is 127.0.0.1"), "any address" and the broadcast address (RFC 1122), and the factory
# defaults of home routers' own address (192.168.0.1, 192.168.1.1, 10.0.0.1), shared by millions.
_EVERYONES = frozenset(["0.0.0.0", "255.255.255.255", "192.168.0.1", "192.168.1.1", "10.0.0.1"])


def _ips(text: str) -> Iterator[Finding]:
    if _IPV4_HINT.search(text):
        for m in _IPV4.finditer(text):
            try:
                address = ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            if address.is_loopback or str(address) in _EVERYONES:
                continue
            if any(word in text[max(0, m.start() - 24) : m.start()].lower() for word in _VERSION_WORDS):
                continue  # "version 10.4.22.1", "build 6.3.9600.1": four numbers, not a host
            yield Finding("ip", m.start(), m.end())
    if "::" in text or text.count(":") >= 5:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            if candidate.count(":") < 2 or len(candidate) < 6:
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield Finding("ip", m.start(), m.end())


# Detectors of digit-bearing entities run only on the windows around digit clusters; the others
# scan the whole text behind their own cheap pre-checks.
def _in_windows(kinds: Collection[str], regions: tuple[str, ...]) -> list[Detector]:
    table: dict[str, Detector] = {
        "phone": lambda text: phones.phones(text, regions),
        "card": identifiers.cards,
        "ssn": identifiers.ssns,
        "national_id": identifiers.national_ids,
    }
    return [table[kind] for kind in kinds if kind in table]


# Digits between letters as an Italian codice fiscale or a Mexican CURP has them: one scan for both.
_LETTER_ID_HINT = re.compile(r"[0-9]{2}(?:[A-Za-z][0-9]{2}[A-Za-z][0-9]{3}|[0-9]{4}[HMX][A-Z]{5})")


def _national_in_text(text: str) -> Iterator[Finding]:
    yield from identifiers.ninos(text)
    if _LETTER_ID_HINT.search(text):
        yield from identifiers.fiscal_codes(text)
        yield from national_ids.curps(text)


_NEED_DIGITS = frozenset(["iban", "national_id", "ip"])
_IN_TEXT: dict[str, Detector] = {
    "email": _all_emails,
    "iban": identifiers.ibans,
    "national_id": _national_in_text,
    "ip": _ips,
    "secret": credentials.secrets,
}


# Cards, IBANs, SSNs, phone numbers and the numeric national ids hold 7 or more digits with at most
# short separators between them (a Spanish DNI: 8 and a letter); text without such a cluster skips
# all of those detectors. ISO dates (8 digits) are not clusters.
# A line break may stand beside a dash, dot or slash: "123-45-\n6789" wrapped after the dash.
_GAP = r"(?:[ \t.\-/()_]{0,3}|[.\-/]?[ \t]*\r?\n[ \t]*[.\-/]?)"
# [0-9], not \d: a character class lets the scan skip ahead at C speed (99 µs to 9 on 2,000 letters);
# other scripts' digits are ASCII after normalization.
# The leading lookahead lets the scan skip to the next digit or "+" at C speed: with four
# alternatives and none, the scan of a 2,000-character prompt took 90 µs; with it 37 (main's three: 56).
_CLUSTER = re.compile(
    rf"(?=[0-9+])(?:[0-9](?:{_GAP}[0-9]){{8,}}|[0-9]{{7,8}}-?[A-Za-z]|[0-9]{{2}}\.[0-9]{{3}}\.[0-9]{{3}}[ -]?[A-Za-z]"
    rf"|\+[0-9](?:{_GAP}[0-9]){{6,}})"
)


def detect_pii(
    text: str, kinds: Collection[str] = PII_KINDS, regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
) -> list[Finding]:
    """Findings with spans of `text` itself (not of its normalized form)."""
    view = normalize(text)
    norm = view.text
    found: list[Finding] = []
    digits = _DIGIT.search(norm) is not None
    for kind in kinds:
        scan = _IN_TEXT.get(kind)
        if scan is not None and (digits or kind not in _NEED_DIGITS):
            found.extend(scan(norm))
    numeric = _in_windows(kinds, regions)
    if numeric and digits:
        for start, end in _numeric_windows(norm):
            piece = norm[start:end]
            for scan in numeric:
                found.extend(Finding(f.kind, f.start + start, f.end + start) for f in scan(piece))
    # One entity, one kind: an IBAN's digits may also pass another id's checksum by chance.
    kept = non_overlapping(found)
    if view.identity:
        return kept
    return [Finding(f.kind, *view.original(f.start, f.end)) for f in kept]


_DIGIT = re.compile(r"[0-9]")
_PAD = 48  # context each side of a digit cluster: country codes, "phone:", "SSN" and the like


def _numeric_windows(text: str) -> list[tuple[int, int]]:
    """The parts of `text` around digit clusters, merged, cut at whitespace so that word boundaries
    inside a window are the same as in the whole text."""
    windows: list[tuple[int, int]] = []
    for m in _CLUSTER.finditer(text):
        start, end = max(0, m.start() - _PAD), min(len(text), m.end() + _PAD)
        if start:
            space = text.find(" ", start, m.start())
            start = space + 1 if space != -1 else start
        if end < len(text):
            space = text.rfind(" ", m.end(), end)
            end = space if space != -1 else end
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        else:
            windows.append((start, end))
    return windows
