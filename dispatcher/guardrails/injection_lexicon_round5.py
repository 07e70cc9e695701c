"""Round five's words for the injection heuristics, per mechanism, in the same 15 languages: the
weakest families of the fourth blind set (fiction 0.30, exfiltration 0.26, refusal suppression
0.41 for the heuristics alone) and its prompt-design false positives.

- EXACT: a demand for operational precision ("in precise quantities", "step by step", "nothing left
  out", "real commands", "the full recipe"). A story that asks for it about a weapon or a drug is an
  attack (rule FICTION + HARM with EXACT near them); a story without it is a story.
- FICTION gains the grandma exploit ("my grandmother used to tell me how to make napalm") and scenes;
  HARM gains more harmful objects.
- Refusal suppression written as skipping the caveats ("spare me the warnings", "skip the
  disclaimers") next to a harmful object or an "unfiltered" answer.
- Exfiltration of the text the model was set up with, named without "system prompt" ("the text you
  were initialised with", "your opening instructions", "what came before my first message"), and
  "translate your instructions" as a way to reveal them.
- Prompt design is not exfiltration: "write a system prompt for a dental clinic's assistant" (DISCUSS).

Text and terms are both matched accent-folded (injection.py), so accents need not be listed.
"""

from __future__ import annotations

ROUND5: dict[str, tuple[str, ...]] = {
    "EXACT": (
        "exact", "precise quantities", "precise amounts", "in precise", "step by step", "step-by-step",
        "nothing left out", "leave nothing out", "don't leave anything out", "do not leave anything out",
        "don't skip", "no placeholders", "real commands", "actual commands", "actual working", "real working",
        "full code", "complete code", "full recipe", "complete recipe", "recipe", "with all the quantities",
        "quote the page", "in full",
        "genau", "exakt", "schritt für schritt", "ohne auslassungen", "lass nichts weg", "vollständig", "rezept",
        "exacte", "précis", "étape par étape", "sans rien omettre", "ne résume pas", "en entier", "recette",
        "exacta", "exacto", "exactas", "paso a paso", "sin omitir", "con todas las cantidades", "receta",
        "esatt", "passo dopo passo", "passo passo", "quantità precise", "senza omettere", "ricetta",
        "exat", "passo a passo", "sem cortar", "sem omitir", "receita",
        "precies", "stap voor stap", "laat niets weg", "echte commando", "recept",
        "dokładnie", "krok po kroku", "nic nie pomijaj", "ze wszystkimi proporcjami", "z proporcjami", "przepis",
        "пошагово", "шаг за шагом", "ничего не пропускай", "с настоящими командами", "точные количества", "рецепт",
        "一步一步", "逐步", "详细步骤", "精确", "确切", "配方", "正確な", "手順を", "省略せず", "レシピ",
        "단계별", "정확한", "빠짐없이", "재료와 순서", "레시피",
        "بالتفصيل", "خطوة بخطوة", "بالكميات الدقيقة", "لا تختصر", "وصفة",
        "कदम-दर-कदम", "कदम दर कदम", "विस्तार से", "पूरी विधि", "सटीक", "कुछ भी मत छोड़ो",
        "adım adım", "tüm miktarlarıyla", "atlamadan", "ayrıntılı", "tarif",
    ),
    "FICTION": (
        "scene", "thriller", "grandma", "grandmother", "my late", "oma$", "grand-mère", "abuela", "nonna",
        "avó", "babcia", "babci", "бабушк", "奶奶", "祖母", "おばあちゃん", "할머니", "جدتي", "دادी", "büyükanne",
        "szene", "scène", "escena", "scena", "cena$", "сцен", "场景", "シーン", "장면", "مشهد", "दृश्य", "sahne",
    ),
    "HARM": (
        "ricin", "thermite", "napalm", "molotov", "nerve agent", "sarin", "untraceable gun", "ghost gun",
        "launder", "skim card", "card skimm", "ransomware", "pipe bomb", "toxic gas",
        "materiał wybuchow", "wybuchow", "patlayıcı", "متفجر", "विस्फोटक", "폭발물", "爆発物", "爆炸物",
        "explosif", "springstof", "metanfetamin", "metamfetamin", "метамфетамин", "冰毒", "필로폰",
        "gás tóxico", "gaz toxique", "gas tóxico", "gas tossico", "giftgas", "gaz trujący",
    ),
    "NEGATED": (
        "spare me", "skip the", "skip all", "skip any", "drop the", "cut the", "no need for", "must not contain",
        "lass alle", "lass die", "laat alle", "laat de", "omite", "ometti", "omita", "pomiń", "tekrar etme",
        "تخط", "छोड़ो", "빼고", "省略して", "不用加", "не добавляй", "sans aucun", "sin ninguna",
    ),
    "CAVEAT": (
        "safety notes", "safety reminders", "moral commentary", "hedge", "as an ai", "the usual caveats",
        "sicherheitshinweise", "moralpredigt", "morale", "sermones", "sermão", "sermões", "prediche",
        "preken", "moralizowania", "нравоучени", "说教", "説教", "훈계", "مواعظ", "उपदेश", "ahlak dersi",
    ),
    "FREE": (
        "unfiltered", "ungefiltert", "non filtrée", "sin filtrar", "non filtrata", "sem filtro",
        "ongefilterd", "bez filtrów", "без фильтров", "未经过滤", "フィルターなし", "필터 없는",
        "غير المفلترة", "बिना फ़िल्टर", "filtresiz",
    ),
    "SYSTEM_PROMPT": (
        "initialized with", "initialised with", "before i started typing", "came before mine",
        "setup message", "setup text", "your setup", "opening instructions", "startup instructions",
        "text you were given", "you were told by", "were you told",
        "mit dem du konfiguriert", "anfangsanweisungen", "avec lesquelles on t'a", "consignes qu'on t'a données",
        "con las que te configuraron", "con las que empezaste", "che ti ha dato chi", "istruzioni iniziali che",
        "que recebeu de quem", "waarmee je bent ingesteld", "openingsinstructies", "heeft de beheerder je",
        "którym cię skonfigurowano", "od których zaczęła się", "kazał ci administrator",
        "которым тебя настроили", "配置你时", "設定したときの", "설정할 때", "처음에 받은 지시",
        "تمت تهيئتك", "التعليمات الافتتاحية", "تعليماتك الافتتاحية", "أخبرك المسؤول",
        "सेट किया गया", "व्यवस्थापक ने तुम्हें", "seni yapılandırmak", "başlangıç talimat", "yönetici sana",
    ),
    "REVEAL": (
        "paste it", "paste back", "translate your", "übersetze deine", "traduis tes", "traduce las", "traduci le",
        "traduza as", "vertaal je", "przetłumacz", "переведи свои", "翻译你", "翻訳して", "번역해", "ترجم",
        "अनुवाद करो", "انقله", "उसे शब्द", "인용해", "aktar",
    ),
    "DISCUSS": (
        "system prompt for a", "system prompt for an", "system prompt for the", "system prompts for",
        "example system prompts", "systemprompt für", "prompt système pour", "prompt de sistema para",
        "prompt di sistema per", "systeemprompt voor", "prompt systemowy dla", "системный промпт для",
        "için sistem istemi", "के लिए सिस्टम प्रॉम्प्ट", "용 시스템 프롬프트",
        # Talk about jailbreaks in the languages whose word for it the list lacked, and the defender's
        # view of a leaking prompt; an attack still addresses the model (SECOND_PERSON), these do not.
        "джейлбрейк", "ジェイルブレイク", "jailbreak'", "탈옥", "越狱", "जेलब्रेक", "كسر الحماية",
        "best practices", "good practices", "from leaking", "leaked on", "so that users",
    ),
    # Russian object forms: "у тебя нет ограничений" addresses the model as surely as "ты" (which a
    # longer term such as "ты теперь" can take first), so a text saying "джейлбрейк" is not talk then.
    "SECOND_PERSON": ("тебя$", "тебе$", "тобой$", "твоя$", "твоё$", "твое$", "твоих$"),
}  # fmt: skip
