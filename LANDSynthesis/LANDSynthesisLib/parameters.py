"""Parameter dataclasses of the LAND Logics, built from a dict or an instance (the Logics accept either)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def dataclassFrom(
    cls: type[T], parameters: T | Mapping[str, Any] | None, what: str, error: type[Exception]
) -> T:
    """``parameters`` as a ``cls``: None gives the defaults, an instance is returned as is, a mapping must
    name only fields of ``cls`` (else ``error`` lists the unknown ``what`` parameters)."""
    if parameters is None:
        return cls()
    if isinstance(parameters, cls):
        return parameters
    unknown = sorted(set(parameters) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise error(f"unknown {what} parameter(s): {', '.join(unknown)}")
    return cls(**dict(parameters))  # type: ignore[arg-type]
