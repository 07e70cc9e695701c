"""Benign text nobody here wrote, for the n-gram classifier's training: what every Python holds.

    python bench/benign_corpus.py            # how many passages, and the corpus's sha256

The labelled sets' benign prompts are short and were written by the same kind of author as their
attacks; a model trained on them only learned that long, ordinary prose looks like a jailbreak (round
seven: 30 % of passages of novels and 31 % of software documentation paragraphs flagged; see
docs/guardrails.md). This corpus is one of two remedies (the other, long benign documents in 15
languages, is round7_train.jsonl): paragraphs of the Python standard library's docstrings, English
technical prose, read with `ast` from the interpreter's own sources, so every machine with the same
Python version builds the same corpus (its sha256 is printed and recorded with the weights'
figures). Nothing of it is committed.

Tried and dropped in round seven: the translated messages of the machine's gettext catalogues (git,
coreutils, apt... in 14 languages). They cut false positives on prose as well, but software's
imperatives ("use --force to override", "do not ...") taught the model that commands are benign:
leave-one-blind-round-out recall fell from 0.85 to 0.74 with 100 passages per language.
"""

from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
from pathlib import Path

PASSAGES = 300  # enough to move the model, not to drown the labelled benign prompts
MIN_PARAGRAPH = 200  # characters: shorter docstring paragraphs are one-line summaries
SEED = 20261201


def docstring_paragraphs() -> list[str]:
    """Paragraphs of the standard library's module, class and function docstrings, read with `ast`
    (importing every module would run some: `antigravity` opens a web browser)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: set[str] = set()
    for path in sorted(stdlib.rglob("*.py")):
        if {"site-packages", "test", "tests", "idlelib"} & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs.update(p.strip() for p in doc.split("\n\n") if len(p.strip()) >= MIN_PARAGRAPH)
    return sorted(paragraphs)


def corpus() -> list[str]:
    """The passages, the same on every machine with the same Python version."""
    paragraphs = docstring_paragraphs()
    random.Random(SEED).shuffle(paragraphs)
    return paragraphs[:PASSAGES]


def digest(passages: list[str]) -> str:
    return hashlib.sha256("\x00".join(passages).encode("utf-8")).hexdigest()


def main() -> None:
    passages = corpus()
    print(f"{len(passages)} passages, sha256 {digest(passages)}")


if __name__ == "__main__":
    main()
