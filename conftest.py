"""Runs every code example in README.md and docs/ as a test (sybil).

```python blocks run as doctests or as plain code; ```sh blocks in docs/ run
in bash, in a fresh directory per page, with this Python's `filespool` command
on PATH. Illustrative commands that cannot run here use ```console.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import tempfile
from typing import Any

from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _run_shell(example: Example) -> str | None:
    environment = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", str(example.parsed)],
        cwd=example.namespace["directory"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        return f"exit status {result.returncode}\n{result.stdout}{result.stderr}"
    return None


def _enter_directory(namespace: dict[str, Any]) -> None:
    namespace["_directory"] = tempfile.TemporaryDirectory(prefix="filespool-docs-")
    namespace["directory"] = namespace["_directory"].name
    # The examples' own mkdtemp() calls land in it too, and go with it.
    namespace["_tempdir"], tempfile.tempdir = tempfile.tempdir, namespace["directory"]


def _leave_directory(namespace: dict[str, Any]) -> None:
    tempfile.tempdir = namespace["_tempdir"]
    namespace["_directory"].cleanup()


_python = PythonCodeBlockParser(doctest_optionflags=_FLAGS)

pytest_collect_file = (
    Sybil(
        parsers=[_python, CodeBlockParser("sh", _run_shell)],
        patterns=["docs/*.md"],
        setup=_enter_directory,
        teardown=_leave_directory,
    )
    + Sybil(
        parsers=[_python],
        filenames=["README.md"],
        setup=_enter_directory,
        teardown=_leave_directory,
    )
).pytest()

# The example backend's contract runs once, from tests/test_docs.py (which checks what the
# page says of it), not a second time here.
collect_ignore = ["docs/examples"]
