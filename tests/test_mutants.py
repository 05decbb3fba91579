"""The mutation check's own health: a refactor that moves a mutant's text fails here, at
once, not only in `nox -s mutants`."""

from __future__ import annotations

import pytest

from mutants import MUTANTS, ROOT, Mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_every_mutant_finds_its_text_exactly_once(mutant: Mutant) -> None:
    assert (ROOT / mutant.path).read_text().count(mutant.original) == 1
