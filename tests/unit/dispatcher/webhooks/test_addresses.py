"""The webhook address rules: every forbidden class, numeric host forms, the allow-list, and the
check against what a name resolves to (a resolver stub: no test here asks real DNS or leaves the
machine)."""

from __future__ import annotations

import ipaddress

import pytest

from dispatcher.errors import WebhookRefused
from dispatcher.webhooks.addresses import WebhookPolicy, classify, inet_aton


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.1.2", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "private"),  # TEST-NET-1: documentation only
        ("198.18.0.1", "private"),  # benchmarking
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:127.0.0.1", "ipv4_embedded"),
        ("::ffff:8.8.8.8", "ipv4_embedded"),
        ("::127.0.0.1", "ipv4_embedded"),
        ("64:ff9b::7f00:1", "ipv4_embedded"),
        ("2002:7f00:1::", "ipv4_embedded"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "ipv4_embedded"),
    ],
)
def test_forbidden_classes(address: str, rule: str) -> None:
    assert classify(ipaddress.ip_address(address)) == rule


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111"])
def test_global_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.0x10.0300", "10.16.0.192"),
        ("0", "0.0.0.0"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
    ],
)
def test_inet_aton_forms(host: str, address: str) -> None:
    assert inet_aton(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "256.1.1.1", "09.1.1.1", "4294967296", "1..2", ""]
)
def test_not_inet_aton(host: str) -> None:
    assert inet_aton(host) is None


def _rule(policy: WebhookPolicy, url: str) -> str:
    with pytest.raises(WebhookRefused) as caught:
        policy.check_url(url)
    assert caught.value.status == 400 and caught.value.param == "webhook.url"
    assert f"(rule: {caught.value.rule})" in caught.value.message
    return caught.value.rule


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:8080/admin/keys", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://017700000001/", "loopback"),
        ("http://127.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "ipv4_embedded"),
        ("http://[::ffff:7f00:1]/", "ipv4_embedded"),
        ("http://localhost:8080/", "loopback"),
        ("http://LOCALHOST./", "loopback"),
        ("http://api.localhost/", "loopback"),
        ("http://10.0.0.5/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://100.64.1.1/", "shared"),
        ("http://user:pass@example.com/", "userinfo"),
        ("http://user@example.com/", "userinfo"),
        ("ftp://example.com/", "scheme"),
        ("http:///path", "url"),
        ("http://example.com:99999/", "url"),
    ],
)
def test_check_url_refuses(url: str, rule: str) -> None:
    assert _rule(WebhookPolicy.build([]), url) == rule


def test_https_only() -> None:
    policy = WebhookPolicy.build([], https_only=True)
    assert _rule(policy, "http://example.com/") == "https_only"
    assert policy.check_url("https://example.com/hook").key == "https://example.com:443"


def test_allow_list_opens_named_addresses_hosts_and_ports_only() -> None:
    policy = WebhookPolicy.build(["127.0.0.1:9000", "10.0.0.0/8", "hooks.internal", "[::1]:7000"])
    assert policy.check_url("http://127.0.0.1:9000/h").ip == ipaddress.ip_address("127.0.0.1")
    assert policy.check_url("http://2130706433:9000/h").key == "http://2130706433:9000"
    assert _rule(policy, "http://127.0.0.1:9001/h") == "loopback"  # another port on loopback
    assert policy.check_url("http://10.9.8.7/").port == 80
    assert policy.check_url("http://[::1]:7000/").port == 7000
    assert _rule(policy, "http://[::1]:7001/") == "loopback"
    assert _rule(policy, "http://192.168.0.1/") == "private"
    assert _rule(policy, "http://169.254.169.254/") == "metadata"


def _stub(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such host")
        return answers[host]

    return resolve


async def _resolved_rule(policy: WebhookPolicy, url: str) -> str:
    with pytest.raises(WebhookRefused) as caught:
        await policy.check(url)
    return caught.value.rule


async def test_names_are_judged_by_what_they_resolve_to() -> None:
    resolver = _stub(
        {
            "loop.example": ["127.0.0.1"],
            "private.example": ["10.1.1.1"],
            "linklocal.example": ["169.254.3.3"],
            "imds.example": ["169.254.169.254"],
            "imds6.example": ["fd00:ec2::254"],
            "mixed.example": ["93.184.216.34", "192.168.0.10"],
            "mapped.example": ["::ffff:10.0.0.1"],
            "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        }
    )
    policy = WebhookPolicy.build([], resolver=resolver)
    assert await _resolved_rule(policy, "http://loop.example/") == "loopback"
    assert await _resolved_rule(policy, "http://private.example/") == "private"
    assert await _resolved_rule(policy, "http://linklocal.example/") == "link_local"
    assert await _resolved_rule(policy, "http://imds.example/") == "metadata"
    assert await _resolved_rule(policy, "http://imds6.example/") == "metadata"
    assert await _resolved_rule(policy, "http://mixed.example/") == "private"  # one bad address is enough
    assert await _resolved_rule(policy, "http://mapped.example/") == "ipv4_embedded"
    assert await _resolved_rule(policy, "http://nowhere.example/") == "unresolvable"
    destination = await policy.check("https://public.example/hook")
    assert destination.key == "https://public.example:443"
    allowed = WebhookPolicy.build(["loop.example"], resolver=resolver)
    assert (await allowed.check("http://loop.example/")).host == "loop.example"


async def test_refusal_codes() -> None:
    policy = WebhookPolicy.build([], resolver=_stub({}))
    with pytest.raises(WebhookRefused) as forbidden:
        policy.check_url("http://10.0.0.1/")
    assert forbidden.value.code == "webhook_address_forbidden"
    with pytest.raises(WebhookRefused) as invalid:
        policy.check_url("http://a:b@example.com/")
    assert invalid.value.code == "webhook_url_invalid"
    with pytest.raises(WebhookRefused) as unresolvable:
        await policy.check("http://nowhere.example/")
    assert unresolvable.value.code == "webhook_address_unresolvable"


async def test_a_resolver_that_never_answers_is_unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from dispatcher.webhooks import addresses

    async def silent(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        return []

    monkeypatch.setattr(addresses, "_RESOLVE_S", 0.05)
    assert (
        await _resolved_rule(WebhookPolicy.build([], resolver=silent), "http://slow.example/")
        == "unresolvable"
    )
