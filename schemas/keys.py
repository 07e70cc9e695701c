"""API keys issued at run time (`modelbus keys create`, `POST /admin/keys`), as kept in the key bucket."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


class ApiKeyRecord(BaseModel):
    """Everything about a key except the key: it is shown once at creation and kept only as a hash."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    consumer: str = Field(min_length=1, max_length=128)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    description: str = Field(default="", max_length=256)

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class ApiKeyView(BaseModel):
    """What the admin API and the CLI show about a key (never its hash)."""

    id: str
    consumer: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    description: str
    status: str

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKeyView:
        return cls(
            id=record.id,
            consumer=record.consumer,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            description=record.description,
            status=record.status(),
        )


class CreatedApiKey(ApiKeyView):
    key: str = Field(description="the key itself: shown this once, never stored")


class ApiKeyCreate(BaseModel):
    """Body of POST /admin/keys."""

    model_config = ConfigDict(extra="forbid")

    consumer: str = Field(min_length=1, max_length=128)
    id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    expires_in_s: float | None = Field(default=None, gt=0, description="no expiry if unset")
    description: str = Field(default="", max_length=256)
