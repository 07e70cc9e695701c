"""PII and secret detectors: patterns find candidates, checksums and rules keep the real ones.

Validation is what keeps precision up: a 16-digit order number is not a card unless it passes Luhn
and has a card network's prefix; an IBAN must have its country's length and pass mod-97; national
ids carry their own check digits. Each detector has a cheap pre-check so a prompt without digits,
`@` or the right prefixes costs almost nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterator

from dispatcher.guardrails.findings import Finding, non_overlapping
from schemas.policy import PII_KINDS

Detector = Callable[[str], Iterator[Finding]]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# --- e-mail -------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}\b"
)


_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _emails(text: str) -> Iterator[Finding]:
    # Try the pattern only where an address before an "@" can begin: where the run of local-part
    # characters starts, or just after a "%" in it (the only one that satisfies the lookbehind).
    # Searching the window around each "@" instead cost 5 µs a character on "a@a@a@...".
    at = text.find("@")
    done = 0
    while at != -1:
        begin = max(done, at - 64)
        first = at
        while first > begin and text[first - 1] in _LOCAL:
            first -= 1
        starts = [first, *(i + 1 for i in range(first, at) if text[i] == "%")]
        end_pos = min(len(text), at + 256)
        for start in starts:
            m = _EMAIL.match(text, start, end_pos)
            if m is not None:
                yield Finding("email", m.start(), m.end())
                done = m.end()
                break
        at = text.find("@", max(at + 1, done))


# --- payment cards ------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}(?![\d-])")
_CARD_PREFIX = re.compile(r"^(?:4|5[0-9]|2[2-7]|3[47]|3[0689]|6|35)")  # Visa, Mastercard, Maestro, Amex, ...


_DIGIT_RUN = re.compile(r"\d+")


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        # The run may hold a card next to other numbers ("card 4111 ... 1111 123"): try each span of
        # whole digit groups, longest first, for one that is a card.
        runs = [(r.start() + m.start(), r.end() + m.start()) for r in _DIGIT_RUN.finditer(m.group())]
        spans: list[tuple[int, int]] = []
        for a in range(len(runs)):
            count = 0
            for b in range(a, len(runs)):
                count += runs[b][1] - runs[b][0]
                # Separators, if any, must be consistent groups (4-4-4-4, 4-6-5), not random spacing;
                # stopping here keeps "1 1 1 1 ..." linear.
                if count > 19 or (b > a and not all(3 <= r[1] - r[0] <= 6 for r in (runs[a], runs[b]))):
                    break
                if count >= 13:
                    spans.append((a, b))
        spans.sort(key=lambda ab: (runs[ab[0]][0] - runs[ab[1]][1], runs[ab[0]][0]))
        taken_until = -1
        for a, b in spans:
            start, end = runs[a][0], runs[b][1]
            if start < taken_until:
                continue
            raw = text[start:end]
            digits = raw.replace(" ", "").replace("-", "")
            if not (13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and _luhn(digits)):
                continue
            yield Finding("card", start, end)
            taken_until = end


# --- IBAN ---------------------------------------------------------------------------------------
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_IBAN_LENGTH = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23,
    "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20,
    "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "ME": 22, "MT": 31, "NL": 18, "NO": 15,
    "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TR": 26, "UA": 29,
}  # fmt: skip


def _iban_ok(iban: str) -> bool:
    if _IBAN_LENGTH.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group().replace(" ", "")):
            yield Finding("iban", m.start(), m.end())


# --- US social security numbers -----------------------------------------------------------------
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SSN_BARE = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}((?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})\b"
)


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        yield Finding("ssn", m.start(), m.end())
    lowered = text.lower()
    if "ssn" in lowered or "social security" in lowered:
        for m in _SSN_BARE.finditer(text):
            yield Finding("ssn", m.start(1), m.end(1))


# --- other national ids (with check digits) -----------------------------------------------------
_NINO = re.compile(
    r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_DNI = re.compile(r"\b(\d{8})-?([TRWAGMYFPDXBNJZSQVHLCKE])\b")
_SIN = re.compile(r"(?<![\d-])\d{3}([ -])\d{3}\1\d{3}(?![\d-])")
_AADHAAR = re.compile(r"(?<!\d)[2-9]\d{3} \d{4} \d{4}(?!\d)")
_NIR = re.compile(r"\b([12]) ?(\d{2}) ?(0[1-9]|1[0-2]) ?(\d{2}|2[AB]) ?(\d{3}) ?(\d{3}) ?(\d{2})\b")
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]  # fmt: skip
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]  # fmt: skip


def _verhoeff(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


_NINO_HINT = re.compile(r"\d\d ?\d\d ?\d\d ?[A-D]\b")


def _ninos(text: str) -> Iterator[Finding]:
    if _NINO_HINT.search(text):
        for m in _NINO.finditer(text):
            yield Finding("national_id", m.start(), m.end())


def _numeric_ids(text: str) -> Iterator[Finding]:
    for m in _DNI.finditer(text):
        if "TRWAGMYFPDXBNJZSQVHLCKE"[int(m.group(1)) % 23] == m.group(2):
            yield Finding("national_id", m.start(), m.end())
    for m in _SIN.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if digits[0] not in "08" and _luhn(digits):
            yield Finding("national_id", m.start(), m.end())
    for m in _AADHAAR.finditer(text):
        if _verhoeff(m.group().replace(" ", "")):
            yield Finding("national_id", m.start(), m.end())
    for m in _NIR.finditer(text):
        body = "".join(m.groups()[:6]).replace("2A", "19").replace("2B", "18")
        if 97 - int(body) % 97 == int(m.group(7)):
            yield Finding("national_id", m.start(), m.end())


# --- phone numbers ------------------------------------------------------------------------------
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3}\1\d{4}"  # 555-123-4567
    r"|0\d{1,4}(?:[ -]\d{2,8}){1,4})(?![\w-])"  # national with a trunk 0: 030 1234567, 01 23 45 67 89
)
_PHONE_CONTEXT = re.compile(
    r"(?i)(?:phone|tel|mobile|cell|call|fax|whatsapp|text me|reach me|contact|☎|anruf|telefon|téléphone)"
)


def _phones(text: str) -> Iterator[Finding]:
    for m in _PHONE.finditer(text):
        raw = m.group()
        digits = sum(c.isdigit() for c in raw)
        if not 8 <= digits <= 15:
            continue
        if raw.startswith("0") and not _PHONE_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            # National formats collide with too much else (ids, amounts) without a word saying "phone".
            continue
        yield Finding("phone", m.start(), m.end())


# --- IP addresses -------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")


def _ips(text: str) -> Iterator[Finding]:
    if _IPV4_HINT.search(text):
        for m in _IPV4.finditer(text):
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
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


# --- secrets ------------------------------------------------------------------------------------
_SECRET = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*$)"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{60,255}\b"
    r"|\bglpat-[A-Za-z0-9_-]{20,}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b"
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b"
    r"|\bAIza[0-9A-Za-z_-]{35}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|\bmb-[A-Za-z0-9_-]{30,}"
)
_ASSIGNED = re.compile(
    r"(?ai)(?<![a-z])(?:password|passwd|pwd|passphrase|secret|client_secret|api[_-]?key|access[_-]?token|auth[_-]?token"
    r"|aws_secret_access_key|private[_-]?key)\b[\"']?\s*[:=]\s*[\"']?(?!\[[A-Z_]+\])"
    # Values are ASCII (a non-ASCII letter ends one: the stream masker may cut there).
    # Code that names where a secret comes from is not one: `api_key = os.environ["KEY"]`,
    # `password=get_password()`, `$DB_PASSWORD`, `process.env.API_KEY`, `password: string`.
    r"(?![a-z_][a-z_.]*[(\[])(?!\$\{?[a-z_])(?![a-z_]+(?:\.[a-z_]+)+(?:[\s\"',;)]|$))"
    r"(?!(?:str|string|int|bool|boolean|number|bytes|none|null|undefined|optional|secretstr)\b)"
    r"([!#-&(-+\--:<-~]{6,})"
)
_SECRET_HINTS = ("-----BEGIN", "AKIA", "ASIA", "_", "glpat-", "xox", "sk-", "AIza", "eyJ", "mb-")
_ASSIGNED_HINTS = ("pass", "pwd", "secret", "key", "token")
# "the password is X": only when X looks like a password (a digit or a symbol in it), not "reset".
_SAID = re.compile(
    r"(?ai)(?<![a-z])(?:password|passwd|pwd|passphrase)\s+(?:is|was)\s+[\"']?(?!\[[A-Z_]+\])((?=\S*[\d\W])[!#-&(-+\--:<-~]{6,})"
)


def _secrets(text: str) -> Iterator[Finding]:
    # Substring tests run at memchr speed; the big alternation only runs when one could match.
    if any(hint in text for hint in _SECRET_HINTS):
        for m in _SECRET.finditer(text):
            yield Finding("secret", m.start(), m.end())
    if "=" in text or ":" in text:
        lowered = text.lower()
        if any(hint in lowered for hint in _ASSIGNED_HINTS):
            for m in _ASSIGNED.finditer(text):
                yield Finding("secret", m.start(1), m.end(1))
    if "pass" in text.lower() or "pwd" in text.lower():
        for m in _SAID.finditer(text):
            yield Finding("secret", m.start(1), m.end(1))


# Detectors of digit-bearing entities run only on the windows around digit clusters; the others
# scan the whole text behind their own cheap pre-checks.
_IN_WINDOWS: dict[str, Detector] = {
    "phone": _phones,
    "card": _cards,
    "iban": _ibans,
    "ssn": _ssns,
    "national_id": _numeric_ids,
}
_IN_TEXT: dict[str, Detector] = {
    "email": _emails,
    "national_id": _ninos,
    "ip": _ips,
    "secret": _secrets,
}
assert set(_IN_WINDOWS) | set(_IN_TEXT) == set(PII_KINDS)


# Cards, IBANs, SSNs, phone numbers and the numeric national ids hold 9 or more digits with at most
# single separators between them (a Spanish DNI: 8 and a letter); text without such a cluster skips
# all of those detectors. ISO dates (8 digits) are not clusters.
_CLUSTER = re.compile(r"\d(?:[ .()-]{0,2}\d){8,}|\d{8}-?[A-Z]|\+\d(?:[ .()-]{0,2}\d){6,}")


def detect_pii(text: str, kinds: Collection[str] = PII_KINDS) -> list[Finding]:
    found: list[Finding] = []
    for kind in kinds:
        scan = _IN_TEXT.get(kind)
        if scan is not None:
            found.extend(scan(text))
    numeric = [_IN_WINDOWS[kind] for kind in kinds if kind in _IN_WINDOWS]
    if numeric:
        for start, end in _numeric_windows(text):
            piece = text[start:end]
            for scan in numeric:
                found.extend(Finding(f.kind, f.start + start, f.end + start) for f in scan(piece))
    # One entity, one kind: an IBAN's digits may also pass another id's checksum by chance.
    return non_overlapping(found)


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
