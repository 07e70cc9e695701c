"""Which webhook URLs the gateway may call: the one place that classifies addresses (SSRF guard).

A webhook is a request the gateway makes on a caller's behalf, from inside the network. So the URL
is checked twice: at task creation (a 400 naming the rule) and again on every connection at delivery,
against the addresses the name resolves to *then* — the sender connects to exactly the addresses this
module approved, so a name that changes its answer in between (DNS rebinding) gains nothing.

Refused unless the allow-list names them: loopback, private, link-local, multicast, unspecified,
shared (100.64/10), reserved and other non-global ranges, cloud metadata endpoints, IPv6 forms that
carry an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo), and URLs with userinfo. Numeric hosts
are read the way the C resolver's inet_aton reads them (`2130706433`, `0x7f.1`, `0177.0.0.1`,
`127.1`), since that is how the connecting side would read them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dispatcher.errors import WebhookRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (strings); injectable so tests never use real DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.169.253",  # AWS DNS
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not global, not "private"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RESOLVE_S = 5.0
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address glibc's inet_aton would read from `host`, or None if it is not numeric.

    1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the last part fills the remaining
    bytes: `a` is 32 bits, `a.b` is 8.24, `a.b.c` is 8.8.16."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if any(c in "89" for c in part):
                return None  # not octal: inet_aton refuses it
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, the deprecated "IPv4-compatible" form
        return ipaddress.IPv4Address(int(ip))
    return None


def classify(ip: IPAddress) -> str | None:
    """The rule that forbids calling `ip`, or None for an ordinary global address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        if _embedded_ipv4(ip) is not None:
            return "ipv4_embedded"  # refused outright: whatever it embeds, it is a way around the rest
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared"
    if ip.is_reserved:  # before private: some Pythons count 240/4 as private too
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class _Allowed:
    network: Network | None
    host: str | None
    port: int | None


def _parse_entry(entry: str) -> _Allowed:
    """`CIDR`, `IP`, `host`, each optionally with `:port` (`[v6]:port` for IPv6)."""
    entry, port = entry.strip(), None
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        entry, port = address, int(rest[1:]) if rest.startswith(":") else None
    elif entry.count(":") == 1:
        entry, port_text = entry.split(":")
        port = int(port_text)
    try:
        return _Allowed(ipaddress.ip_network(entry, strict=False), None, port)
    except ValueError:
        return _Allowed(None, _normal_host(entry), port)


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked webhook URL: what to connect to, and what the breaker and limits are keyed on."""

    scheme: str
    host: str  # as written (lower case), for the Host header and TLS SNI
    port: int
    ip: IPAddress | None  # the host was an address literal (already checked)

    @property
    def key(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class WebhookPolicy:
    allow: tuple[_Allowed, ...] = ()
    https_only: bool = False
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def build(
        cls, allow: Iterable[str], https_only: bool = False, resolver: Resolver = system_resolver
    ) -> WebhookPolicy:
        return cls(tuple(_parse_entry(e) for e in allow if e.strip()), https_only, resolver)

    def allowed(self, port: int, ip: IPAddress | None = None, host: str | None = None) -> bool:
        for entry in self.allow:
            if entry.port is not None and entry.port != port:
                continue
            if ip is not None and entry.network is not None and ip in entry.network:
                return True
            if host is not None and entry.host is not None and entry.host == _normal_host(host):
                return True
        return False

    def check_ip(self, ip: IPAddress, port: int, host: str | None = None) -> None:
        rule = classify(ip)
        if rule is not None and not self.allowed(port, ip, host):
            raise WebhookRefused(rule, f"webhook address {ip} is not allowed")

    def check_url(self, url: str) -> Destination:
        """The static checks (scheme, userinfo, literal addresses, metadata names): no DNS."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise WebhookRefused("url", "webhook URL is malformed", "webhook_url_invalid") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise WebhookRefused("scheme", "webhook URL must be http or https", "webhook_url_invalid")
        if self.https_only and scheme != "https":
            raise WebhookRefused("https_only", "webhook URL must be https", "webhook_url_invalid")
        if "@" in parts.netloc:
            raise WebhookRefused("userinfo", "webhook URL must not carry credentials", "webhook_url_invalid")
        host = _normal_host(parts.hostname or "")
        if not host:
            raise WebhookRefused("url", "webhook URL has no host", "webhook_url_invalid")
        port = port or (443 if scheme == "https" else 80)
        ip = literal_address(host)
        if ip is not None:
            self.check_ip(ip, port)
        elif not self.allowed(port, host=host):
            if host in METADATA_HOSTS:
                raise WebhookRefused("metadata", f"webhook host {host} is a cloud metadata endpoint")
            if host == "localhost" or host.endswith(".localhost"):
                raise WebhookRefused("loopback", f"webhook host {host} is loopback")
        return Destination(scheme, host, port, ip)

    async def addresses(self, destination: Destination) -> list[IPAddress]:
        """Resolve the destination now and check every address it gives: any forbidden one refuses
        the lot (a name answering with a public and a private address is not half-allowed)."""
        if destination.ip is not None:
            return [destination.ip]
        try:
            # A name server that never answers must not hold a task creation (or a delivery slot).
            found = await asyncio.wait_for(self.resolver(destination.host, destination.port), _RESOLVE_S)
        except (OSError, TimeoutError):
            raise WebhookRefused(
                "unresolvable",
                f"webhook host {destination.host} does not resolve",
                "webhook_address_unresolvable",
            ) from None
        ips = [ipaddress.ip_address(a) for a in dict.fromkeys(found)]
        if not ips:
            raise WebhookRefused(
                "unresolvable",
                f"webhook host {destination.host} does not resolve",
                "webhook_address_unresolvable",
            )
        for ip in ips:
            self.check_ip(ip, destination.port, destination.host)
        return ips

    async def check(self, url: str) -> Destination:
        """Everything task creation can know: the URL's form and where its host resolves now."""
        destination = self.check_url(url)
        await self.addresses(destination)
        return destination


def literal_address(host: str) -> IPAddress | None:
    """`host` as an address if it is one: IPv6 (brackets already stripped) or any inet_aton form."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return inet_aton(host)
