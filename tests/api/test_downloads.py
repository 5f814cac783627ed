"""The byte ranges a download honours (api/downloads.py), as RFC 9110 reads them."""

from __future__ import annotations

import pytest

from api.downloads import _byte_range
from api.errors import APIError


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=10-99", (10, 100)),
        ("bytes=10-", (10, 1000)),
        ("bytes=-5", (995, 1000)),
        ("bytes=990-5000", (990, 1000)),  # a last byte past the end is the end
        (None, None),
        ("bytes=0-1,5-6", None),  # several ranges: the whole object, which a server may send
        ("items=0-1", None),
    ],
)
def test_ranges(header, expected):
    assert _byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2"])
def test_a_range_past_the_end_is_416_with_the_size(header):
    with pytest.raises(APIError) as raised:
        _byte_range(header, 1000)
    assert raised.value.status == 416 and raised.value.headers == {"content-range": "bytes */1000"}
