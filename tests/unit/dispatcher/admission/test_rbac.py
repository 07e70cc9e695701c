"""Per-model RBAC: deny unless a role grants the operation on a matching model name."""

from __future__ import annotations

from dispatcher.admission.rbac import Authorizer
from schemas.config import ConsumerConfig, ModelbusConfig, ModelConfig
from schemas.policy import RoleConfig


def _config() -> ModelbusConfig:
    return ModelbusConfig(
        models=[ModelConfig(name=n) for n in ("llama-8b", "llama-70b", "embed", "a*b")],
        roles=[
            RoleConfig(name="small", models=["llama-8b", "embed"], operations=["chat", "embeddings"]),
            RoleConfig(name="llamas", models=["llama-*"], operations=["chat"]),
            RoleConfig(name="literal", models=["a[*]b"], operations=["chat"]),
        ],
        consumers=[ConsumerConfig(name="c", roles=["small"])],
    )


def test_deny_by_default() -> None:
    auth = Authorizer(_config())
    assert not auth.permits(frozenset(), "llama-8b", "chat")
    assert not auth.permits(frozenset({"no-such-role"}), "llama-8b", "chat")
    assert auth.visible(frozenset(), ["llama-8b", "embed"]) == []


def test_roles_grant_models_and_operations() -> None:
    auth = Authorizer(_config())
    small = frozenset({"small"})
    assert auth.permits(small, "llama-8b", "chat")
    assert auth.permits(small, "embed", "embeddings")
    assert not auth.permits(small, "llama-8b", "completions")  # operation not granted
    assert not auth.permits(small, "llama-70b", "chat")  # model not granted
    assert not auth.permits(small, None, "admin")
    llamas = frozenset({"llamas"})
    assert auth.permits(llamas, "llama-70b", "chat") and not auth.permits(llamas, "embed", "chat")
    # Patterns are matched whole: a prefix is not enough.
    assert not auth.permits(llamas, "xllama-8b", "chat")
    # A literal `*` in a model name is matched only when the pattern says so.
    assert auth.permits(frozenset({"literal"}), "a*b", "chat")
    assert not auth.permits(frozenset({"literal"}), "axb", "chat")
    assert auth.visible(small | llamas, ["llama-8b", "llama-70b", "embed", "a*b"]) == [
        "llama-8b",
        "llama-70b",
        "embed",
    ]


def test_builtin_roles() -> None:
    auth = Authorizer(_config())
    assert auth.permits(frozenset({"user"}), "a*b", "batch")
    assert not auth.permits(frozenset({"user"}), None, "admin")
    assert auth.permits(frozenset({"admin"}), None, "admin")
    assert not auth.permits(frozenset({"admin"}), "llama-8b", "chat")
