"""Registry URIs as this project accepts them: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

Serving arms, ``recsys compare``'s candidates and the configuration check all parse them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.validation import message

MODEL_URI_PREFIX = "models:/"
"""A value that starts with this names a registered model."""


@dataclass(frozen=True)
class ModelURI:
    """A parsed registry URI: a model ``name`` and either an ``alias`` or a ``version``."""

    uri: str
    name: str
    alias: str | None = None
    version: str | None = None


def is_model_uri(value: object) -> bool:
    """Whether ``value`` names a registered model (rather than, say, a policy spec)."""
    return isinstance(value, str) and value.startswith(MODEL_URI_PREFIX)


def parse_model_uri(uri: str, name: str = "uri") -> ModelURI:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; ``ValueError`` naming ``name``."""
    expected = "'models:/NAME@ALIAS' or 'models:/NAME/VERSION'"
    if not is_model_uri(uri):
        raise ValueError(message(name, expected, repr(uri)))
    rest = uri[len(MODEL_URI_PREFIX):]
    if "@" in rest:
        model, _, alias = rest.rpartition("@")
        if model and alias and "/" not in model and "/" not in alias:
            return ModelURI(uri, model, alias=alias)
    else:
        model, _, version = rest.rpartition("/")
        if model and "/" not in model and version.isdigit() and int(version) > 0:
            return ModelURI(uri, model, version=str(int(version)))
    raise ValueError(message(name, expected, repr(uri)))
