"""Name validation and generation."""

from __future__ import annotations

import multiprocessing
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filespool.errors import InvalidName
from filespool.names import unique_name, validate_name


@given(st.text())
def test_valid_names_are_exactly_the_safe_ones(name: str) -> None:
    safe = (
        name != ""
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)
        and len(name.encode("utf-8", "surrogatepass")) <= 255
    )
    if safe:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidName):
            validate_name(name)


def test_generated_names_are_valid_sorted_and_maildir_shaped() -> None:
    names = [unique_name() for _ in range(10_000)]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names[:100]:
        assert validate_name(name) == name
        assert re.fullmatch(r"\d{10}\.M\d{6}P\d+Q\d+R[0-9a-f]{16}\.[A-Za-z0-9_-]+", name), name


def _names_in_child(count: int) -> list[str]:
    return [unique_name() for _ in range(count)]


def test_names_do_not_collide_across_processes() -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        batches = pool.map(_names_in_child, [2000] * 4)
    everything = [name for batch in batches for name in batch]
    assert len(set(everything)) == len(everything)
