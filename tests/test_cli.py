"""The command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*arguments: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "filespool", *arguments],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def test_demo_verifies_exactly_once(tmp_path: Path) -> None:
    result = run("demo", "--messages", "600", "--producers", "2", "--consumers", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for line in ["delivered:    600", "claimed:      600", "duplicates:   0", "lost:         0"]:
        assert line in out
    assert "exactly once: yes" in out
    assert "messages/s" in out


def test_demo_on_a_given_spool_leaves_it_empty(tmp_path: Path) -> None:
    result = run("demo", "--url", str(tmp_path / "spool"), "--messages", "50")
    assert result.returncode == 0, result.stderr
    for folder in ["tmp", "new", "cur"]:
        assert [
            p for p in (tmp_path / "spool" / folder).iterdir() if not p.name.startswith(".")
        ] == []


def test_init_put_ls_cat(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    assert run("init", spool).stdout.decode().strip() == f"file://{spool}"
    source = tmp_path / "job.txt"
    source.write_bytes(b"from a file")
    put = run("put", spool, str(source), "-", stdin=b"from stdin")
    assert put.returncode == 0, put.stderr
    first, second = put.stdout.decode().split()
    listed = run("ls", spool).stdout.decode().split()
    assert listed == [f"{spool}/new/{first}", f"{spool}/new/{second}"]
    assert run("cat", spool, second).stdout == b"from stdin"


def test_bad_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    for arguments in [
        ("ls", "nope://x"),
        ("ls", str(tmp_path / "missing")),
        ("cat", str(tmp_path), "../escape"),
        ("demo", "--messages", "zero"),
    ]:
        result = run(*arguments)
        assert result.returncode == 2, arguments
        assert b"Traceback" not in result.stderr
        assert result.stderr.strip().count(b"\n") <= 1 or arguments[0] == "demo"
