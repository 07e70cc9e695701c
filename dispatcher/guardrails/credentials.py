"""Secrets in text: API keys and tokens by their vendors' formats, passwords by the words around them.

Hand-written: no library in use here covers token formats (each vendor documents its own prefix) or
passwords said in a sentence in fifteen languages. Runs on normalized text (pii.py) behind cheap
substring pre-checks, so a prompt without the right prefixes or words costs almost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from dispatcher.guardrails.findings import Finding
from dispatcher.guardrails.national_ids import ascii_words, mentions

_DIGIT = re.compile(r"[0-9]")

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
    r"|\bhf_[A-Za-z0-9]{30,}\b"  # Hugging Face
    r"|\bSG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}"  # SendGrid
    r"|\bSK[0-9a-f]{32}\b"  # Twilio API key SID
    r"|(?<=AccountKey=)[A-Za-z0-9+/]{40,}={0,2}"  # Azure storage connection strings
    r"|\bnpm_[A-Za-z0-9]{36}\b"  # npm access tokens
    r"|\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{40,}"  # PyPI API tokens (a macaroon naming pypi.org)
)
# More vendors' token formats, each as its vendor documents it (gitleaks keeps the same list as
# rules), in groups behind one cheap test each: a substring test of 2,000 characters costs about a
# microsecond, so one per vendor (29) cost 27 µs a prompt. Underscored: Shopify, DigitalOcean,
# Linear, Grafana, Figma, Notion, Groq, Replicate, Supabase, Sentry.
_UNDERSCORED_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|do[por]_v1_[a-f0-9]{64}|lin_api_[A-Za-z0-9]{40}"
    r"|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/]{32,}={0,2}|figd_[A-Za-z0-9_-]{40}"
    r"|secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{46}|gsk_[A-Za-z0-9]{52}|r8_[A-Za-z0-9]{37}|sbp_[a-f0-9]{40}"
    r"|sntry[su]_[A-Za-z0-9+/=_-]{40,})(?![A-Za-z0-9_-])"
)
# Webhook URLs that are their own credential (Slack, Discord), behind "hooks".
_WEBHOOK = re.compile(
    r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{20,}"
    r"|https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{15,20}/[A-Za-z0-9_-]{60,}"
)
# Telegram bot tokens: the bot's id, a colon, 35 characters from "AA" (behind ":AA").
_TELEGRAM = re.compile(r"(?<![A-Za-z0-9_])[0-9]{8,10}:AA[A-Za-z0-9_-]{33}(?![A-Za-z0-9_-])")
# Prefixes in capitals (Postman, New Relic, Square, Alibaba and Tencent Cloud key ids, age): a branch of
# literals whose first letters are capitals, which the scan skips to at C speed (4 µs on 2,000 characters).
_CAPITAL_TOKEN = re.compile(
    r"(?:PMAK-[a-f0-9]{24}-[a-f0-9]{34}|NRAK-[A-Z0-9]{27}|EAAA[A-Za-z0-9_-]{60}|LTAI[A-Za-z0-9]{20}"
    r"|AKID[A-Za-z0-9]{32}|AGE-SECRET-KEY-1[0-9A-Z]{58})(?![A-Za-z0-9_-])"
)
# Lower-case prefixes without an underscore (HashiCorp Vault, Doppler, Databricks, Square, Perplexity),
# each behind its own substring.
_LOWER_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:hvs\.[A-Za-z0-9_-]{24,}|dp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,44}|dapi[a-f0-9]{32}(?:-[0-9])?"
    r"|sq0(?:atp|csp)-[A-Za-z0-9_-]{22,43}|pplx-[A-Za-z0-9]{48})(?![A-Za-z0-9_-])"
)
_LOWER_HINTS = ("hvs.", "dp.", "dapi", "sq0", "pplx-")


def _vendor_tokens(text: str) -> Iterator[re.Match[str]]:
    if "_" in text:
        yield from _UNDERSCORED_TOKEN.finditer(text)
    if "hooks" in text:
        yield from _WEBHOOK.finditer(text)
    if ":AA" in text:
        yield from _TELEGRAM.finditer(text)
    yield from _CAPITAL_TOKEN.finditer(text)
    if any(hint in text for hint in _LOWER_HINTS):
        yield from _LOWER_TOKEN.finditer(text)


# The password of a URL with credentials (database and broker URLs: scheme://user:password@host).
# A mask placeholder in its place (`[SECRET]`, after masking) is none.
_URL_PASSWORD = re.compile(
    r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:(?!\[[A-Z_]+\]@)([^\s/@]{3,128})@", re.IGNORECASE
)
_ASSIGNED = re.compile(
    r"(?ai)(?<![a-z])(?:password|passwd|pwd|passphrase|secret|client_secret|api[_-]?key|access[_-]?token|auth[_-]?token"
    r"|aws_secret_access_key|private[_-]?key"
    # The word for password in the other languages the guardrails read ("la contraseña=...").
    r"|passwort|kennwort|mot[_ ]de[_ ]passe|contrase(?:ñ|n)a|senha|wachtwoord|has(?:ł|l)o|пароль|şifre|sifre"
    r"|parola|密码|パスワード|비밀번호)(?![a-z0-9_])[\"']?\s*[:=]\s*[\"']?(?!\[[A-Z_]+\])"
    # Values are ASCII (a non-ASCII letter ends one: the stream masker may cut there).
    # Code that names where a secret comes from is not one: `api_key = os.environ["KEY"]`,
    # `password=get_password()`, `$DB_PASSWORD`, `process.env.API_KEY`, `password: string`.
    r"(?![a-z_][a-z_.]*[(\[])(?!\$\{?[a-z_])(?![a-z_]+(?:\.[a-z_]+)+(?:[\s\"',;)]|$))"
    r"(?!(?:str|string|int|bool|boolean|number|bytes|none|null|undefined|optional|secretstr)\b)"
    r"([!#-&(-+\--:<-~]{6,})"
)
_SECRET_HINTS = (
    "-----BEGIN", "AKIA", "ASIA", "_", "glpat-", "xox", "sk-", "AIza", "eyJ", "mb-", "SG.", "SK", "AccountKey=", "pypi-",
)  # fmt: skip
# (Also _NAMED's words, below: "jeton", "токен" and the CJK words for token and secret key.)
_ASSIGNED_HINTS = (
    "pass", "pwd", "secret", "key", "token", "kennwort", "contrase", "senha", "wachtwoord", "hasło", "haslo",
    "пароль", "şifre", "sifre", "parola", "密码", "パスワード", "비밀번호", "jeton", "токен", "密碼", "密钥", "秘钥",
    "令牌", "トークン", "토큰",
)  # fmt: skip
_ASSIGNED_ASCII = ascii_words(_ASSIGNED_HINTS)
# "the password is X": only when X looks like a password (a digit or a symbol in it), not "reset".
# A digit, or a symbol with more of the value after it: "expired." is a word and a full stop.
_LOOKS_SECRET = r"(?=\S*?(?:\d|[!#-&(-+\-/:<-@\[-`{-~](?=[!#-&(-+\--:<-~а-яёА-ЯЁ])))"
# Up to four short words may name whose password it is ("the password of the admin account is X").
_WHOSE = r"(?:\s+[^\s:=]{1,20}){0,4}?"
_SAID = re.compile(
    r"(?ai)(?<![a-z])(?:password|passwd|pwd|passphrase)"
    + _WHOSE
    + r"\s+(?:is|was)\s+[\"']?(?!\[[A-Z_]+\])("
    + _LOOKS_SECRET
    + r"[!#-&(-+\--:<-~]{6,})"
)
# The same said in the other languages the guardrails read.
_SAID_ELSEWHERE = re.compile(
    r"(?i)(?:(?:passwort|kennwort)(?:\s+\S+){0,4}?\s+(?:ist|lautet|war)|mot de passe(?:\s+\S+){0,4}?\s+(?:est|était)"
    r"|contraseña(?:\s+\S+){0,4}?\s+(?:es|era)|password(?:\s+\S+){0,4}?\s+è|senha(?:\s+\S+){0,4}?\s+(?:é|era)"
    r"|wachtwoord(?:\s+\S+){0,4}?\s+is|hasło(?:\s+\S+){0,4}?\s+(?:to|jest)|пароль(?:\s+[^\s:]+){0,3}?\s*(?:—|-|:)"
    r"|пароль\s*(?:—|-|:)?|密码是|密碼是|パスワードは|비밀번호는|كلمة المرور(?:\s+هي)?|पासवर्ड\s+है|पासवर्ड(?=\s+\S{6,}\s+है)|şifre(?:m|si)?(?!\w))"
    # A password said in Russian may be written in Cyrillic letters too ("Kр0кодил_Гена77").
    r"\s*[\"'«„]?(?!\[[A-Z_]+\])(" + _LOOKS_SECRET + r"[!#-&(-+\--:<-~а-яёА-ЯЁ]{6,})"
)
# Hindi puts the verb last: "पासवर्ड X है" ("password X is"), matched above with "है" after the value.
# A password or token named for what it opens, then a colon: "password for the guest Wi-Fi:
# X", "de token voor het deployscript: X" (a colon right after the word is _ASSIGNED's). Up to four
# words between, and a value with a letter and a digit or symbol, eight or more characters: "token
# limit: 128000" and "password for the account: expired" are not secrets. Not "secret": it is as
# often a thing's kind ("our Kubernetes secret manifest for debugging: <base64 of a config>").
_NAMED = re.compile(
    r"(?i)(?<![a-z])(?:password|passphrase|passwort|kennwort|mot de passe|contraseña|senha|wachtwoord|hasło"
    r"|пароль|şifre|parola|token|jeton|токен)(?![a-z])(?:\s+[^\s:=]{1,20}){1,4}?\s*[:=]\s*[\"']?"
    r"(?!\[[A-Z_]+\])((?=[!#-&(-+\--:<-~]*?[a-zA-Z])" + _LOOKS_SECRET + r"[!#-&(-+\--:<-~]{8,})"
    # CJK: the word for password, token or secret key right before the colon (no spaces between words).
    r"|(?:密码|密碼|密钥|秘钥|令牌|パスワード|トークン|비밀번호|토큰)\s*[:=]\s*(?!\[[A-Z_]+\])("
    + _LOOKS_SECRET
    + r"[!#-&(-+\--:<-~]{8,})"
)
_SAID_HINTS = (
    "pass",
    "pwd",
    "kennwort",
    "contraseña",
    "senha",
    "wachtwoord",
    "hasło",
    "пароль",
    "密码",
    "密碼",
    "パスワード",
    "비밀번호",
    "كلمة المرور",
    "पासवर्ड",
    "şifre",
)
_SAID_ASCII = ascii_words(_SAID_HINTS)


# An AWS secret access key has no prefix: 40 characters of base64 (upper and lower case, digits) count
# only after a word saying key, secret, credential or access; a git hash (40 hex digits, lower case)
# or a base64 digest is none.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_KEY_WORDS = (
    "key", "secret", "credential", "aws", "access", "token", "schlüssel", "geheim", "zugriff", "zugang", "clave",
    "acceso", "clé", "accès", "chave", "acesso", "chiave", "accesso", "sleutel", "toegang", "klucz", "dostęp",
    "ключ", "секрет", "доступ", "anahtar", "erişim", "密钥", "秘钥", "访问", "キー", "シークレット", "키", "비밀",
    "مفتاح", "कुंजी",
)  # fmt: skip


def _aws_secret_keys(text: str, lowered: str) -> Iterator[Finding]:
    # Cheapest test first (2,000 characters: a digit 6 µs, a 40-character word 18, the words 52);
    # the caller has found a digit and a word of 40 characters.
    if not any(word in lowered for word in _KEY_WORDS):
        return
    for m in _AWS_SECRET.finditer(text):
        key = m.group()
        if key.lower() != key and key.upper() != key and any(c.isdigit() for c in key):
            before = lowered[max(0, m.start() - 60) : m.start()]
            if any(word in before for word in _KEY_WORDS):
                yield Finding("secret", m.start(), m.end())


def secrets(text: str) -> Iterator[Finding]:
    lowered = text.lower()
    # A key of twenty or more random letters and digits holds a digit (all but one in thirty), and
    # the shortest of the vendors' formats is 24 characters without a space: text without both skips
    # the prefix-less AWS keys and the vendors' formats.
    if _DIGIT.search(text) is not None:
        longest = max(map(len, text.split()), default=0)
        if longest >= 40:
            yield from _aws_secret_keys(text, lowered)
        if longest >= 24:
            for m in _vendor_tokens(text):
                yield Finding("secret", m.start(), m.end())
    # Substring tests run at memchr speed; the big alternation only runs when one could match.
    if any(hint in text for hint in _SECRET_HINTS):
        for m in _SECRET.finditer(text):
            yield Finding("secret", m.start(), m.end())
    if "://" in text and "@" in text:
        for m in _URL_PASSWORD.finditer(text):
            yield Finding("secret", m.start(1), m.end(1))
    if ("=" in text or ":" in text) and mentions(lowered, _ASSIGNED_HINTS, _ASSIGNED_ASCII):
        for m in _ASSIGNED.finditer(text):
            yield Finding("secret", m.start(1), m.end(1))
        for m in _NAMED.finditer(text):
            group = 1 if m.start(1) != -1 else 2
            yield Finding("secret", m.start(group), m.end(group))
    if mentions(lowered, _SAID_HINTS, _SAID_ASCII):
        for pattern in (_SAID, _SAID_ELSEWHERE):
            for m in pattern.finditer(text):
                yield Finding("secret", m.start(1), m.end(1))
