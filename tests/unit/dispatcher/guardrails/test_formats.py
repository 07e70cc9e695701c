"""Every PII format and disguise the guardrails once missed, found in input and masked in streamed
output; normalization maps findings back so masking replaces exactly what was written."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.guardrails.findings import mask
from dispatcher.guardrails.normalize import normalize
from dispatcher.guardrails.pii import detect_pii
from dispatcher.guardrails.response import ResponseGuard
from schemas.envelope import Endpoint, OutputGuardrails

# (text, kind, the exact original span that must be masked)
MISSED = [
    ("card 4111.1111.1111.1111 please", "card", "4111.1111.1111.1111"),
    ("card 4111/1111/1111/1111 please", "card", "4111/1111/1111/1111"),
    ("the card is 4111 1111\n1111 1111 thanks", "card", "4111 1111\n1111 1111"),
    ("カード ４１１１ １１１１ １１１１ １１１１ です", "card", "４１１１ １１１１ １１１１ １１１１"),
    ("card 4111\u200b1111\u200b1111\u200b1111 ok", "card", "4111\u200b1111\u200b1111\u200b1111"),
    ("iban de89 3704 0044 0532 0130 00 for rent", "iban", "de89 3704 0044 0532 0130 00"),
    ("iban de89370400440532013000 for rent", "iban", "de89370400440532013000"),
    ("from abroad call 0044 20 7946 0958 today", "phone", "0044 20 7946 0958"),
    ("Rufen Sie 030 12345678 an", "phone", "030 12345678"),
    ("Appelez le 01 23 45 67 89 demain", "phone", "01 23 45 67 89"),
    ("電話番号は03-1234-5678です", "phone", "03-1234-5678"),
    ("Kontakt: JÖRG@BÜCHER.DE bitte", "email", "JÖRG@BÜCHER.DE"),
    ("mail john dot doe at example dot com today", "email", "john dot doe at example dot com"),
    ("write jdoe [at] example [dot] org", "email", "jdoe [at] example [dot] org"),
    ("SSN 078.05.1120 on file", "ssn", "078.05.1120"),
    # Round four's misses (round4.jsonl, once the blind set): the formats, with other numbers.
    ("card no. 4111  1111  1111  1111  exp 01/29", "card", "4111  1111  1111  1111"),
    ("Datos:\nES91 2100 0418\n4502 0005 1332 gracias", "iban", "ES91 2100 0418\n4502 0005 1332"),
    ("DNI del titular: 12.345.678-Z", "national_id", "12.345.678-Z"),
    ("Il numero di Marco è 347 123 4567, chiamalo domani.", "phone", "347 123 4567"),
    ("Le mot de passe du compte admin est Tr0ub4dor&3, merci.", "secret", "Tr0ub4dor&3"),
    ("La contraseña del router es Naranja#2291, gracias.", "secret", "Naranja#2291"),
    ("A senha do e-mail da loja é Mango@2024, ok.", "secret", "Mango@2024"),
    ("Пароль от почты: Чебурашка_42, никому.", "secret", "Чебурашка_42"),
    ("the password for the staging database is Blue$ky77 today", "secret", "Blue$ky77"),
    # The fourth blind set's misses (heldout.jsonl, measured once): written-out dots in other
    # languages, Indic addresses (combining marks), a grouped Chinese resident id.
    (
        "Meine Adresse: anna punkt beispiel at example punkt de",
        "email",
        "anna punkt beispiel at example punkt de",
    ),
    ("écris à jean point dupont at exemple point fr", "email", "jean point dupont at exemple point fr"),
    ("मुझे उपयोगकर्ता@उदाहरण.परीक्षा पर ईमेल करें।", "email", "उपयोगकर्ता@उदाहरण.परीक्षा"),
    ("身份证：440305 19830711 7737", "national_id", "440305 19830711 7737"),
    # Round five: a card wrapped once, anywhere, by a notes app (after a card word).
    ("Here's the card, it wrapped:\n44422549\n28394213\nexp 03/27", "card", "44422549\n28394213"),
    ("Kreditkarte:\n4111111111\n111111 bitte", "card", "4111111111\n111111"),
    # The fifth blind set's misses (now round6.jsonl, tuning data): the at-sign's name in other
    # languages, national ids of Portugal, Belgium, Sweden, Russia, Germany in pairs, China before 1983,
    # an SSN wrapped beside its dash.
    ("Adresse: sabine punkt vogt ät posteo punkt de, danke", "email", "sabine punkt vogt ät posteo punkt de"),
    ("mon mail : julien arobase orange point fr", "email", "julien arobase orange point fr"),
    ("écris à julien arobase orange.fr", "email", "julien arobase orange.fr"),
    ("a lucia.ortega (arroba) telefonica (punto) es", "email", "lucia.ortega (arroba) telefonica (punto) es"),
    ("o meu email é rui.sampaio arroba sapo ponto pt", "email", "rui.sampaio arroba sapo ponto pt"),
    ("Il mio indirizzo è giulia chiocciola libero punto it", "email", "giulia chiocciola libero punto it"),
    ("Mój adres: tomasz.wisniewski małpa wp kropka pl", "email", "tomasz.wisniewski małpa wp kropka pl"),
    ("почта: andrey.smirnov собака yandex точка ru", "email", "andrey.smirnov собака yandex точка ru"),
    ("Quer fatura com contribuinte? Sim, NIF 196 407 036.", "national_id", "196 407 036"),
    ("Numéro de registre national : 85.07.30-033.28", "national_id", "85.07.30-033.28"),
    ("Rijksregisternummer 85073003328, graag", "national_id", "85073003328"),
    ("Sökandens personnummer är 19860304-3897.", "national_id", "19860304-3897"),
    ("The applicant's personnummer is 860304-3897.", "national_id", "860304-3897"),
    ("ИНН физлица: 777580423780, для справки.", "national_id", "777580423780"),
    ("ИНН организации 7707083893.", "national_id", "7707083893"),
    ("Steuerliche Identifikationsnummer: 65 35 90 82 41 4", "national_id", "65 35 90 82 41 4"),
    ("身份证号：330106196506042564，请核对。", "national_id", "330106196506042564"),
    ("身份证 33010619650604018X 请核对", "national_id", "33010619650604018X"),
    ("SSN on the second page:\n359-10\n-2169", "ssn", "359-10\n-2169"),
    ("SSN 123-45-\n6789 on file", "ssn", "123-45-\n6789"),
    # The sixth blind set's misses (heldout.jsonl, measured once, tuning data since): more national
    # ids, npm and PyPI tokens, an AWS secret key after a word saying what it is.
    ("CURP: GOPB670308HJCLTD01", "national_id", "GOPB670308HJCLTD01"),
    ("Meu CPF é 508.612.966-48.", "national_id", "508.612.966-48"),
    ("Danish CPR number: 171181-7110", "national_id", "171181-7110"),
    ("Norwegian fødselsnummer 28047015628", "national_id", "28047015628"),
    ("Finnish henkilötunnus: 051298-690E", "national_id", "051298-690E"),
    ("South African ID number 6106267996089", "national_id", "6106267996089"),
    ("Swiss AHV number: 756.1109.7025.69", "national_id", "756.1109.7025.69"),
    ("Chilean RUT: 11.945.514-6", "national_id", "11.945.514-6"),
    ("Greek AMKA: 22127300634", "national_id", "22127300634"),
    ("Austrian social insurance number 5860 160592", "national_id", "5860 160592"),
    ("رقم الهوية البلجيكية الخاص بي هو 94062346387.", "national_id", "94062346387"),
    (
        "clave: npm_djtIMNaG4y6feoVAuYgcq8UTdK034lczxujw ok",
        "secret",
        "npm_djtIMNaG4y6feoVAuYgcq8UTdK034lczxujw",
    ),
    (
        "token pypi-AgEIcHlwaS5vcmcq-n_TyOqgPdNDpJ5t18dka3EIItLyiPJlBfhQTLCLpOgb8mQUjkFM23YcmBf ok",
        "secret",
        "pypi-AgEIcHlwaS5vcmcq-n_TyOqgPdNDpJ5t18dka3EIItLyiPJlBfhQTLCLpOgb8mQUjkFM23YcmBf",
    ),
    (
        "Zugriff mit y0KRmn4gSK1WMMeRoETMuwtxSP2ilI/crbOgNCFR klappt nicht",
        "secret",
        "y0KRmn4gSK1WMMeRoETMuwtxSP2ilI/crbOgNCFR",
    ),
    # ... and the at-sign's and dot's names in Dutch, Russian (a Cyrillic domain), Turkish, Chinese,
    # Japanese and Korean.
    (
        "mail: sdevries apenstaartje bedrijf-west punt nl",
        "email",
        "sdevries apenstaartje bedrijf-west punt nl",
    ),
    (
        "Почта: olga_smirnova31 собака почта-москва точка рф",
        "email",
        "olga_smirnova31 собака почта-москва точка рф",
    ),
    (
        "E-postam mehmet.öztürk et şirket-posta.com nokta tr",
        "email",
        "mehmet.öztürk et şirket-posta.com nokta tr",
    ),
    ("我的邮箱是 wfang (艾特) 公司 (点) 中国", "email", "wfang (艾特) 公司 (点) 中国"),
    (
        "メールは tanaka.ken アットマーク sakura-mail ドット jp です。",
        "email",
        "tanaka.ken アットマーク sakura-mail ドット jp",
    ),
    (
        "제 이메일은 kim+invoices 골뱅이 seoul-corp.co 닷 kr입니다.",
        "email",
        "kim+invoices 골뱅이 seoul-corp.co 닷 kr",
    ),
    ("Контакты: ivan.petrov@почта-москва.рф, спасибо", "email", "ivan.petrov@почта-москва.рф"),
    # ... and phones after a word asking to call (pt, zh, Hinglish), Russia's trunk 8 before "(912)".
    ("Me liga no 912 664 087 depois das 18h.", "phone", "912 664 087"),
    ("请拨打 131 2600 2470 联系我。", "phone", "131 2600 2470"),
    ("mera naya number 08123458810 hai, save kar lo", "phone", "08123458810"),
    ("Контакты: 8 (912) 368-60-71, спасибо", "phone", "8 (912) 368-60-71"),
    # ... an SSN said in a sentence, an IPv6 address with a Korean particle glued on.
    ("Mijn Amerikaanse SSN is 409995099.", "ssn", "409995099"),
    ("로그인 IP는 2607:d285:a2f3:7eb3::3404:776b였습니다.", "ip", "2607:d285:a2f3:7eb3::3404:776b"),
    # The seventh blind set's misses (heldout.jsonl, measured once, tuning data since), one per
    # mechanism, in numbers and words not from the set: underscores between a card's groups, slashes
    # in an SSN, the SSN's name in other languages before nine bare digits, ...
    ("card number 5105_1051_0510_5100 on file", "card", "5105_1051_0510_5100"),
    ("Employee SSN: 212/09/7758 (from the W-4)", "ssn", "212/09/7758"),
    ("Su número de seguro social de Estados Unidos es 212097758, gracias.", "ssn", "212097758"),
    ("الرقم هو 212097758 ورقم الضمان الاجتماعي هو 345126789.", "ssn", "345126789"),
    # ... Russia's trunk 8 with dashes, phone words (hotline, switchboard, landline, call back), and
    # "number" before a run with the trunk 0 or a number grouped as its country writes it.
    ("Звоните на 8-916-123-45-67 вечером.", "phone", "8-916-123-45-67"),
    ("Die Hotline in Wien: 015 899 123 45, werktags", "phone", "015 899 123 45"),
    ("Ankara santrali: 03124567890", "phone", "03124567890"),
    ("家里的座机 15821349876，晚上打。", "phone", "15821349876"),
    ("Proszę oddzwonić pod 58 321 45 67 jutro.", "phone", "58 321 45 67"),
    ("Please use my direct number 07700900461 after lunch.", "phone", "07700900461"),
    ("Mój numer służbowy: 22.628.31.45, od 9 do 17.", "phone", "22.628.31.45"),
    # ... addresses under a top-level domain in another script, and "at" and "dot" spelled in Arabic
    # and Devanagari letters.
    ("연락처: 민수 골뱅이 학교 닷 한국 으로 보내주세요", "email", "민수 골뱅이 학교 닷 한국"),
    ("راسلني على احمد [at] مكتب [dot] السعودية من فضلك", "email", "احمد [at] مكتب [dot] السعودية"),
    ("ايميلي: omar دوت khalil آت bayt-tech دوت sa شكرا", "email", "omar دوت khalil آت bayt-tech دوت sa"),
    ("ईमेल: rahul डॉट verma एट daftar-mail डॉट in पर भेजें", "email", "rahul डॉट verma एट daftar-mail डॉट in"),
    # ... vendors' token formats (made-up values: a Slack webhook URL, a Telegram bot token, Shopify,
    # DigitalOcean), a password or token named for what it opens before a colon, Hindi's verb-last
    # "पासवर्ड X है", and the Chinese word for token before a full-width colon.
    (
        "Post the alerts to https://hooks.slack.com/services/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 from now on.",
        "secret",
        "https://hooks.slack.com/services/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",
    ),
    (
        "bot token is 608246281:AAkTj0rLGlkoMXGjtEkDnNfribxUdl7dXTP, keep it private",
        "secret",
        "608246281:AAkTj0rLGlkoMXGjtEkDnNfribxUdl7dXTP",
    ),
    (
        "アプリの認証情報：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",
        "secret",
        "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",
    ),
    (
        "Use dop_v1_cb0eb53f16947ccf25ec84d8dbc74254770f58904dba41ecccc3fc1626e53a13 for the droplet API.",
        "secret",
        "dop_v1_cb0eb53f16947ccf25ec84d8dbc74254770f58904dba41ecccc3fc1626e53a13",
    ),
    ("The password for the staff Wi-Fi: Kx9#mPl2vQ, ask reception if it fails", "secret", "Kx9#mPl2vQ"),
    (
        "Het token voor de build-server: maple-orbit-lantern-42 graag bewaren",
        "secret",
        "maple-orbit-lantern-42",
    ),
    ("मेरा पासवर्ड Vt7$kLm92q है, याद रखना", "secret", "Vt7$kLm92q"),
    ("测试环境的令牌：ab12Cd34Ef56xy", "secret", "ab12Cd34Ef56xy"),
    # ... and a word naming an id without its country (personal ID number, national ID, citizen
    # number) before an id of Sweden, Finland, Romania, Czechia, Estonia; nine-digit tax ids.
    ("Her personal ID number is 820314-1232, please check the form.", "national_id", "820314-1232"),
    ("ID number from the residence permit: 140387-200B.", "national_id", "140387-200B"),
    ("The guest's national ID: 1900425400121", "national_id", "1900425400121"),
    ("My citizen number is 735203/1005 as printed on the card.", "national_id", "735203/1005"),
    ("National identification no. 49103120055 was on the scan.", "national_id", "49103120055"),
    ("Our supplier's tax number is 412345678, please update the ledger.", "national_id", "412345678"),
    ("الرقم الضريبي للمورد: 507219834", "national_id", "507219834"),
]


@pytest.mark.parametrize(("text", "kind", "entity"), MISSED)
def test_format_is_found_and_masked_exactly(text: str, kind: str, entity: str) -> None:
    found = detect_pii(text)
    assert [f.kind for f in found] == [kind]
    assert mask(text, found) == text.replace(entity, f"[{kind.upper()}]")


@pytest.mark.parametrize(("text", "kind", "entity"), MISSED)
def test_format_is_masked_in_a_stream(text: str, kind: str, entity: str) -> None:
    guard = ResponseGuard(OutputGuardrails(pii="mask"), Endpoint.CHAT)
    sent = []
    answer = "Here is what you asked for, as recorded in the customer file today: " + text + " - done."
    for i in range(0, len(answer), 3):
        chunk: dict[str, Any] = {
            "choices": [{"index": 0, "delta": {"content": answer[i : i + 3]}, "finish_reason": None}]
        }
        guard.chunk(chunk)
        sent.append(chunk["choices"][0]["delta"]["content"])
    last = guard.finish()
    if last is not None:
        sent.append(last["choices"][0]["delta"]["content"])
    assert "".join(sent) == answer.replace(entity, f"[{kind.upper()}]")
    assert f"output.pii.{kind}:mask" in guard.events


@pytest.mark.parametrize(
    "text",
    [
        "I work at example dot com as a designer.",
        "The range 192.168.0.0/16 is private.",
        # Addresses the same on every machine or home network: loopback, any, a router's factory default.
        "The service listens on 127.0.1.1 and 0.0.0.0; the router's admin page is at 192.168.0.1.",
        "Order 4711-0815-2024 shipped; invoice 2024/03/15/00042.",
        "Call extension 666-12-3456 for facilities.",
        # "number" says phone only when nothing says whose number it is: an order's is none.
        "Your order number is 07700900461.",
        "رقم الفاتورة 22 628 31 45 مدفوع.",
        "Version 10.0.19045.2965, build 2024-01-15.",
        "Our build tag is version 10.4.22.1, not an address.",
        "Die Software-Version 2.14.3.7 ist aktuell.",
        "the password is expired.",
        "Token limit for the model: 128000 per request.",
        "The password for the account: expired yesterday, reset it.",
        "Our secret config for staging: bWF4OiAxMA== (base64 of a setting)",
        "Şifrelerini kimseyle paylaşma, lütfen dikkat et.",
        "We met at the point where the road ends.",
        "This test card number should be rejected by the form: 4826 6367 0225 3426",  # no Aadhaar inside
        "Order refs:\n44422549\n28394213\n",  # two 8-digit numbers that pass Luhn together, no card word
        # The at-sign's names are ordinary words without an address around them.
        "Der Hund ät nicht, sagt Sabine.",
        "la chiocciola è un mollusco",
        "моя собака любит гулять, сайт yandex.ru",
        "Kom och ät mat.se",  # Swedish "eat": "ät" needs a written-out dot
        "En español @ se llama arroba punto com.",
        "الفرج آت قريبا، ونقطة البداية هنا",  # "coming" and "point": no address around them
        # National ids without their name, or with a wrong check digit.
        "Order 860304-3897 shipped",
        "Ref 777580423780 ok",
        "NIF 196407037",
        "身份证号：330106196506042563，请核对。",  # the fifth set's, check digit 3 where 4 is due
        # Numbers on three lines are a list, not a wrapped SSN.
        "Totals:\n123\n45\n6789",
        # Sixth set's kinds without their name, with a wrong check digit, or a card said to be one.
        "Order 171181-7110 shipped",
        # An id word, but someone else's id: a student's, an order's (111222333 passes the BSN check).
        "Student ID number: 111222333",
        "Order ID number 111222333",
        "ref 11.945.514-6 and 28047015628",
        "Chilean RUT: 11.945.514-5",
        "Swiss AHV number: 756.1109.7025.68",
        "CURP: GOPB670308HJCLTD02",
        "commit 907583adf9b6909b8aaa4c3e9d591308604e5451 fixed the key rotation",  # a git hash
        "see y0KRmn4gSK1WMMeRoETMuwtxSP2ilI/crbOgNCFR in the build log",  # no word saying key
        "Pierre et Marie point com",  # French "et" after a plain word is "and"
        "het apenstaartje heet in het Engels at",
        "我的狗 (点) 很可爱",
        # The same digits as order and invoice numbers, without a word asking to call.
        "Pedido 912 664 087 enviado depois das 18h.",
        "订单号 131 2600 2470 已发货。",
        "invoice 08123458810 hai, save kar lo",
        "SSN is 987654321",  # no SSN begins with 9
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert detect_pii(text) == []


def test_a_south_african_id_passing_luhn_is_still_a_card_without_its_name() -> None:
    assert [f.kind for f in detect_pii("card 6106267996089")] == ["card"]


_INVISIBLE = st.sampled_from(["\u200b", "\u200d", "\u2060", "\ufeff", "\u202e", "\u00ad"])


@settings(max_examples=100, deadline=None)
@given(
    before=st.text(alphabet="abc .,", max_size=20),
    after=st.text(alphabet="abc .,", max_size=20),
    noise=st.lists(st.tuples(st.integers(1, 18), _INVISIBLE), max_size=6),  # inside the number
    wide=st.booleans(),
)
def test_masking_replaces_what_was_written_whatever_hides_in_it(
    before: str, after: str, noise: list[tuple[int, str]], wide: bool
) -> None:
    card = "4111 1111 1111 1111"
    if wide:
        card = card.translate(str.maketrans("0123456789 ", "０１２３４５６７８９\u3000"))
    chars = list(card)
    for at, ch in sorted(noise, reverse=True):
        chars.insert(at, ch)
    written = "".join(chars)
    text = f"{before} card {written} {after}"
    assert mask(text, detect_pii(text)) == f"{before} card [CARD] {after}"


def test_normalized_offsets_map_back_to_the_original() -> None:
    text = "x\u200b\u200by ﬁ ① ｚ"
    view = normalize(text)
    assert view.text == "xy fi 1 z"
    assert [text[slice(*view.original(i, i + 1))] for i in range(len(view.text))] == [
        "x", "y", " ", "ﬁ", "ﬁ", " ", "①", " ", "ｚ",
    ]  # fmt: skip
    # A word mixing Latin and Cyrillic letters is read as Latin; a Russian word is left alone.
    assert normalize("pаypal Привет").text == "paypal Привет"
