"""Errors the bus layer raises. The ingress maps them to HTTP in one place (ingress/errors.py)."""

from __future__ import annotations

from schemas.envelope import ErrorCode


class ModelbusError(Exception):
    """Base class. `retryable` tells a client that sending the same request again may succeed."""

    retryable: bool = False


class BusUnavailable(ModelbusError):
    """NATS or JetStream could not take the request (disconnected, no quorum, publish timed out)."""

    retryable = True


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

    def __init__(self, code: ErrorCode, message: str, status: int, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
