"""Name validation and generation."""

from __future__ import annotations

import multiprocessing
import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filespool.errors import InvalidName
from filespool.names import (
    MAX_MESSAGE_NAME_BYTES,
    file_name,
    split_file_name,
    unique_name,
    validate_file_name,
    validate_name,
)


@given(st.text())
def test_valid_names_are_exactly_the_safe_ones(name: str) -> None:
    safe = (
        name != ""
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0:")
        and not any(unicodedata.category(c) == "Cc" for c in name)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)
        and len(name.encode("utf-8", "surrogatepass")) <= MAX_MESSAGE_NAME_BYTES
    )
    if safe:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidName):
            validate_name(name)


@pytest.mark.parametrize("name", ["evil\nname", "tab\there", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_are_refused(name: str) -> None:
    """A name with a newline (or any control character) would break `ls` one per line."""
    with pytest.raises(InvalidName, match="control character"):
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


@given(st.text(min_size=1, max_size=40), st.integers(min_value=0, max_value=10**20 - 1))
def test_file_names_split_back_into_message_and_generation(name: str, generation: int) -> None:
    try:
        validate_name(name)
    except InvalidName:
        return
    assert split_file_name(file_name(name, generation)) == (name, generation)
    assert validate_file_name(file_name(name, generation)) == file_name(name, generation)
    assert len(file_name("x" * MAX_MESSAGE_NAME_BYTES, generation).encode()) <= 255


@pytest.mark.parametrize(
    "bad", ["job:", "job:0", "job:01", "job:x", "job:1:2", ":3", "job:-1", "job:\u0661"]
)
def test_file_names_with_a_colon_must_be_a_generation(bad: str) -> None:
    with pytest.raises(InvalidName):
        split_file_name(bad)
