"""The project's JSON wrapper: what it encodes, and what keeping its output costs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tracemalloc

import pytest
from pydantic import BaseModel

from brokers import json


class Item(BaseModel):
    sku: str
    qty: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_plain_data_models_dataclasses_and_datetimes_encode_compactly() -> None:
    when = dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)
    assert json.dumps({"a": [1, 2.5, None, True], "b": "é"}) == (
        '{"a":[1,2.5,null,true],"b":"é"}'.encode()
    )
    assert json.dumps({"item": Item(sku="x", qty=2), "at": when, "p": Point(1, 2)}) == (
        b'{"item":{"sku":"x","qty":2},"at":"2026-12-03T09:30:00+00:00","p":{"x":1,"y":2}}'
    )
    assert json.dumps({1: "int keys become strings"}) == b'{"1":"int keys become strings"}'
    assert json.loads(json.dumps({"n": [1, {"m": 2}]})) == {"n": [1, {"m": 2}]}


def test_what_cannot_be_encoded_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        json.dumps({"x": object()})
    with pytest.raises(json.JSONDecodeError):
        json.loads(b"{not json")


def test_kept_output_is_right_sized() -> None:
    """orjson hands back its working buffer (kilobytes for a few bytes of JSON); what we keep
    — a log's records, a batch to send — must cost about what it holds."""
    tracemalloc.start()
    try:
        kept = [json.dumps({"amount": i}) for i in range(10_000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(len(b) < 20 for b in kept)
    assert held / len(kept) < 200, f"{held / len(kept):.0f} bytes held per 15-byte value"
