"""Round six's lexicon: the words that ask *why* or *how* something works, in the 15 languages.

A quoted attack phrase asked about ("why do phrases like 'forget all your rules' fool chatbots?",
"explain why 'pretend you have no rules' works") is talk about attacks when nothing outside the
quotation marks attacks or addresses the model (injection.py, `_asks_about_quotes`). A question mark
says the same; these words cover the requests written as imperatives ("explain why ...").
"""

from __future__ import annotations

ROUND6: dict[str, tuple[str, ...]] = {
    "WHY": (
        "why$", "how come", "warum", "wieso", "pourquoi", "por qué", "por que", "perché", "perche$",
        "waarom", "dlaczego", "czemu", "почему", "зачем", "为什么", "為什麼", "なぜ", "どうして", "왜$", "왜 ",
        "لماذا", "क्यों", "neden", "niçin", "niye",
    ),
}  # fmt: skip
