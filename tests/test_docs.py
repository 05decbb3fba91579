"""Claims the docs make that need more than running their examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def test_the_ten_line_contract_test_validates_a_backend(tmp_path: Path) -> None:
    page = (DOCS / "writing-a-backend.md").read_text()
    [example] = re.findall(r"```python\n(import pytest\n.*?)```", page, re.S)
    assert len(example.strip().splitlines()) <= 10
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "spool.py").write_text(
        "from filespool.backends.local import LocalBackend as MyBackend\n"
    )
    (tmp_path / "test_my_backend.py").write_text(example)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_backend.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout)[1])  # type: ignore[index]
    assert passed >= 60
