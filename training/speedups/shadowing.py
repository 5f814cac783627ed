"""An attribute set on one object for the length of a `with` block, then put back as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_MISSING = object()


@contextlib.contextmanager
def shadowed(obj: Any, name: str, value: Any) -> Iterator[None]:
    """`obj.name` is `value` (an instance attribute, shadowing a method of the class) while inside; afterwards
    the instance's own attribute from before is put back, or, if it had none, the class's shows again."""
    own = vars(obj).get(name, _MISSING)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, own)
