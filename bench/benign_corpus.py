"""Benign text nobody here wrote, for the n-gram classifier's training: what a machine already holds.

    python bench/benign_corpus.py            # counts per language and source, and the corpus's sha256

The labelled sets' benign prompts are short and were written by the same kind of author as their
attacks; a model trained on them only learned that long, ordinary prose looks like a jailbreak (round
seven: 30 % of a novel's passages and 32 % of software documentation paragraphs flagged, see
docs/guardrails.md). Two sources every Debian/Ubuntu machine with Python has, in the 15 languages:

- **gettext catalogues** (`/usr/share/locale/*/LC_MESSAGES/*.mo`): the translated messages of git,
  coreutils, apt and the like, full of "ignore", "override", "discard", "do not", "force" said by
  software to its user; their English source strings stand for English.
- **the Python standard library's docstrings**: English technical prose.

Messages of one catalogue are joined into passages of `PASSAGE` characters or so. Which files exist
differs between machines, so the corpus is built at training time and its sha256 is printed and
recorded with the weights' figures (docs/guardrails.md); nothing of it is committed (the catalogues
are the translators' work under their packages' licences).
"""

from __future__ import annotations

import ast
import gettext
import hashlib
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

LOCALE = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "it", "pt", "nl", "pl", "ru", "zh", "ja", "ko", "ar", "hi", "tr")
PER_LANGUAGE = 300  # passages per language and source: enough to move the model, not to drown it
PASSAGE = 600  # characters, about a paragraph
MIN_MESSAGE = 40  # shorter messages are labels and menu items, not prose
SEED = 20261201
_PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[a-zA-Z]|\{[^}]*\}|&(?=\w)")


def _messages(path: Path) -> Iterator[tuple[str, str]]:
    """(English source, translation) of one catalogue, header and short labels left out."""
    try:
        with path.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    except (OSError, ValueError, UnicodeDecodeError):
        return
    for key, value in sorted(catalog.items(), key=lambda kv: str(kv[0])):
        source = key[0] if isinstance(key, tuple) else key
        if not source or not isinstance(value, str) or len(value) < MIN_MESSAGE:
            continue
        yield _PLACEHOLDER.sub("", str(source)).strip(), _PLACEHOLDER.sub("", value).strip()


def _passages(messages: list[str]) -> Iterator[str]:
    passage: list[str] = []
    for message in messages:
        passage.append(message)
        if sum(len(m) for m in passage) >= PASSAGE:
            yield "\n".join(passage)
            passage = []


def _sample(passages: list[str], rng: random.Random) -> list[str]:
    unique = sorted(set(passages))
    rng.shuffle(unique)
    return unique[:PER_LANGUAGE]


def catalogue_passages(rng: random.Random) -> dict[str, list[str]]:
    """Passages per language from the gettext catalogues (English from their source strings)."""
    per_language: dict[str, list[str]] = {lang: [] for lang in ("en", *LANGS)}
    for path in sorted(LOCALE.glob("*/LC_MESSAGES/*.mo")):
        lang = path.parts[len(LOCALE.parts)].split("_")[0].split("@")[0]
        if lang not in LANGS:
            continue
        pairs = list(_messages(path))
        per_language[lang].extend(_passages([translated for _, translated in pairs]))
        if lang == "de":  # each English source once: every language's catalogue repeats them
            per_language["en"].extend(_passages([source for source, _ in pairs]))
    return {lang: _sample(passages, rng) for lang, passages in per_language.items()}


def docstring_passages(rng: random.Random) -> list[str]:
    """Paragraphs of the standard library's module, class and function docstrings, read with `ast`
    (importing every module would run some: `antigravity` opens a web browser)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        if {"site-packages", "test", "tests", "idlelib"} & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs.extend(p.strip() for p in doc.split("\n\n") if len(p.strip()) >= 200)
    return _sample(paragraphs, rng)


def corpus() -> list[tuple[str, str, str]]:
    """(text, language, source) rows, the same on the same machine every time."""
    rng = random.Random(SEED)
    rows = [(text, lang, "gettext") for lang, texts in catalogue_passages(rng).items() for text in texts]
    rows += [(text, "en", "docstrings") for text in docstring_passages(rng)]
    return rows


def digest(rows: list[tuple[str, str, str]]) -> str:
    return hashlib.sha256("\x00".join(text for text, _, _ in rows).encode("utf-8")).hexdigest()


def main() -> None:
    rows = corpus()
    counts = Counter((lang, source) for _, lang, source in rows)
    for (lang, source), n in sorted(counts.items()):
        print(f"{lang:3} {source:11} {n}")
    print(f"{len(rows)} passages, sha256 {digest(rows)}")


if __name__ == "__main__":
    main()
