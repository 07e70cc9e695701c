"""Errors the bus layer raises. The ingress maps them to HTTP in one place (ingress/error_responses.py); the
batch feeder turns a refusal into the error line a sync caller would have got as a response.

    ModelbusError
    ├── Refused                  admission said no; carries the HTTP status and OpenAI code
    │   ├── InvalidRequest       400: the body does not validate
    │   │   └── WebhookRefused   400: a webhook URL or its address breaks a rule (SSRF guard)
    │   ├── Unauthenticated      401: the credential no longer holds (a batch's key was revoked)
    │   ├── Forbidden            403: no role grants the operation on the model
    │   ├── NotFound             404: no such model (or not on this endpoint), task, file, batch
    │   ├── PolicyViolation      400: a guardrail blocked the input, or it is over the token limit
    │   ├── OverLimit            429: a rate limit or token budget is used up
    │   ├── LimitsUnavailable    503: the usage counters cannot be reached (fails closed)
    │   │   ├── GuardrailUnavailable  503: a fail-closed guardrail's classifier did not answer
    │   │   └── CheckerUnavailable    503: a worker process checking large bodies died
    │   └── Withdrawn            a batch line whose batch was cancelled or expired before it ran
    ├── BusUnavailable           NATS or JetStream could not take the request
    ├── RequestTooLarge          the request does not fit in one NATS message
    ├── QueueFull                the request stream is at its limits
    ├── DeadlineExceeded         no complete answer before the deadline
    ├── WorkerLost               the worker went silent mid-reply
    ├── StreamBroken             reply frames lost in transit
    ├── Interrupted              the waiting side gave up (client disconnected)
    ├── RemoteError              the worker or its backend answered with an error frame
    │
    │   Internal: raised and handled inside the broker layer, turned into one of the above (or a
    │   CLI message) before anyone outside sees them.
    ├── ConfigError              the config file is missing, unreadable or invalid (also a ValueError)
    ├── QuotaExceeded            a limit is used up (admission answers OverLimit)
    ├── QuotaUnavailable         the quota counters cannot be reached (admission: LimitsUnavailable)
    ├── KeyExists, KeyNotFound   run-time API key administration
    ├── TaskChanged              a task's KV entry moved on since it was read: read it again
    ├── AckRefused               JetStream answered an audit publish with an error, not a PubAck
    └── WatchLost                a KV watch stopped seeing changes: its supervisor starts a new one
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.envelope import ErrorFrame

# How long a client is told to wait (Retry-After) before repeating a request refused for a passing
# reason: a counter or checker that did not answer, a broker between leaders. Long enough not to be
# a retry storm, short enough that a blip costs an interactive user no more than a second.
RETRY_SOON_S = 1.0


class ModelbusError(Exception):
    """Base class. `retryable` tells a client that sending the same request again may succeed."""

    retryable: bool = False


class Refused(ModelbusError):
    """Admission refused the request before it reached the bus."""

    status = 400

    def __init__(
        self,
        message: str,
        code: str,
        param: str | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(Refused):
    status = 400


class Unauthenticated(Refused):
    status = 401


class Forbidden(Refused):
    status = 403


class NotFound(Refused):
    status = 404


class PolicyViolation(Refused):
    status = 400


Window = Literal["minute", "day", "month"]


class OverLimit(Refused):
    """`window` says which kind of limit: a batch line waits out a minute limit, but fails on a
    day or month budget; `impossible` means the request alone is larger than the limit."""

    status = 429

    def __init__(
        self, message: str, code: str, *, retry_after_s: float, window: Window, impossible: bool
    ) -> None:
        super().__init__(message, code, retry_after_s=retry_after_s)
        self.window = window
        self.impossible = impossible


class LimitsUnavailable(Refused):
    status = 503
    retryable = True


class GuardrailUnavailable(LimitsUnavailable):
    """A guardrail configured to fail closed could not run (its classifier model did not answer in
    time). Like the counters, a dependency of admission is down: 503, and a batch line waits."""


class CheckerUnavailable(LimitsUnavailable):
    """A worker process that checks large bodies and batch files died (killed for memory, say);
    the pool is started again and the request may be retried (dispatcher/admission/offload.py)."""


class Withdrawn(Refused):
    """Not refused on its merits: its batch was cancelled, or its completion window passed."""

    status = 499


class BusUnavailable(ModelbusError):
    """NATS or JetStream could not take the request (disconnected, no quorum, publish timed out)."""

    retryable = True


class RequestTooLarge(ModelbusError):
    """The request does not fit in one NATS message."""


class QueueFull(ModelbusError):
    """The request stream is at its configured limits; the request was not accepted."""

    retryable = True


class DeadlineExceeded(ModelbusError):
    """No complete answer before the request's deadline."""

    retryable = True


class WorkerLost(ModelbusError):
    """The worker serving a stream went silent after part of the answer had been relayed."""

    retryable = True


class StreamBroken(ModelbusError):
    """Reply frames were lost in transit (a sequence gap that did not fill)."""

    retryable = True


class Interrupted(ModelbusError):
    """The waiting side gave up on the reply (its client disconnected)."""


class RemoteError(ModelbusError):
    """The worker or its backend answered with an error frame."""

    def __init__(self, frame: ErrorFrame) -> None:
        super().__init__(frame.message)
        self.code = frame.code
        self.message = frame.message
        self.status = frame.status
        self.retryable = frame.retryable
        self.api_code = frame.api_code  # the backend's meaning in OpenAI's codes (context_length_exceeded)
        self.param = frame.param


class WebhookRefused(InvalidRequest):
    """A webhook URL or the address it resolves to breaks a rule (dispatcher/webhooks/addresses.py).

    `rule` names it (`loopback`, `private`, `metadata`, `userinfo`, ...): the 400 at task creation
    says which, and a delivery refused at connect time records it as the failure reason."""

    def __init__(self, rule: str, message: str, code: str = "webhook_address_forbidden") -> None:
        super().__init__(f"{message} (rule: {rule})", code, "webhook.url")
        self.rule = rule


class WatchLost(ModelbusError):
    """The watch no longer sees the bucket's changes; start a new one."""


class TaskChanged(ModelbusError):
    """The task's entry moved on since it was read (another frame, another collector): read again."""


class ConfigError(ModelbusError, ValueError):
    """The config file is missing, unreadable or invalid; the message says where."""


class QuotaUnavailable(ModelbusError):
    """The counters cannot be reached; admission fails closed (the request could not queue anyway)."""


@dataclass(frozen=True, slots=True)
class QuotaExceeded(ModelbusError):
    limit: str  # e.g. "tokens_per_min"
    scope: str  # "all models" or the model name
    retry_after_s: float
    impossible: bool = False  # the request alone is larger than the limit


class KeyExists(ModelbusError):
    """A key with that id exists (ids are never reused, not even after revocation)."""


class KeyNotFound(ModelbusError):
    """No run-time key with that id."""


class AckRefused(ModelbusError):
    """JetStream answered a publish with an error (no stream, stream full, ...) instead of a PubAck."""
