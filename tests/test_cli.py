"""The command line, run as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pexpect
import pytest

from filespool import FileStore, LeaseLost
from filespool.work import _input_for

FILESPOOL = [sys.executable, "-m", "filespool"]


def run(*arguments: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*FILESPOOL, *arguments], input=stdin, capture_output=True, timeout=300)


@pytest.fixture
def spool(tmp_path: Path) -> str:
    path = str(tmp_path / "spool")
    assert run("init", path).returncode == 0
    return path


def test_demo_verifies_exactly_once() -> None:
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
    store = FileStore(tmp_path / "spool")
    assert [store.names(folder) for folder in ["tmp", "new", "cur", "failed"]] == [[]] * 4


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


def test_stats_recover_and_cleanup(spool: str) -> None:
    store = FileStore(spool)
    for _ in range(3):
        store.deliver(b"x")
    claimed = store.claim()
    with store.create("abandoned") as file:
        file.write("half")
    stats = json.loads(run("stats", spool, "--json").stdout)
    assert {folder: row["count"] for folder, row in stats.items()} == {
        "tmp": 1,
        "new": 2,
        "cur": 1,
        "failed": 0,
    }
    assert stats["new"]["oldest_age"] >= 0
    table = run("stats", spool).stdout.decode()
    assert all(folder in table for folder in ["tmp", "new", "cur", "failed"])
    assert run("recover", spool, "--older-than", "1h").stdout == b""
    assert run("recover", spool, "--older-than", "0s").stdout.decode() == f"returned {claimed}\n"
    assert run("cleanup", spool).stdout == b""
    assert run("cleanup", spool, "--older-than", "0").stdout == b"removed abandoned\n"


# The command for `work`: reads the file, logs its name, and exits as the content says.
BEHAVE = r"""
echo "$FILESPOOL_NAME" >> "$LOG"
case $(cat "$1") in
  ok) exit 0;;
  fail) exit 3;;
  crash) kill -9 $$;;
  slow) sleep "${SLOW:-2}"; exit 0;;
  wait) while [ ! -e "$GO" ]; do sleep 0.02; done; exit 0;;
esac
"""


def work(spool: str, *options: str) -> list[str]:
    """``filespool work`` running BEHAVE on each file; it logs to the file named by $LOG."""
    return [*FILESPOOL, "work", spool, *options, "--", "sh", "-c", BEHAVE, "sh", "{}"]


def test_work_drains_a_thousand_files_with_failures_and_crashes(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool, durable=False)
    kinds = {}
    for i in range(1000):
        kind = "crash" if i % 37 == 0 else "fail" if i % 11 == 0 else "ok"
        kinds[store.deliver(kind)] = kind
    log = tmp_path / "runs.log"
    result = subprocess.run(
        work(spool, "--jobs", "4", "--once", "--max-attempts", "3"),
        env=dict(os.environ, LOG=str(log)),
        capture_output=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr  # some files failed
    runs = Counter(log.read_text().split())
    for name, kind in kinds.items():
        assert runs[name] == (1 if kind == "ok" else 3), (name, kind)
    failed = {name for name, kind in kinds.items() if kind != "ok"}
    assert set(store.names("failed")) == failed
    assert [store.names(folder) for folder in ["tmp", "new", "cur"]] == [[], [], []]
    summary = result.stderr.decode().splitlines()[-1]
    assert summary.startswith(
        f"acked {1000 - len(failed)}, retried {2 * len(failed)}, failed {len(failed)}"
    )


def test_work_gives_content_on_stdin_without_placeholder(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    name = store.deliver(b"through stdin")
    out = tmp_path / "out"
    command = ["sh", "-c", f'cat > {out}; echo "$FILESPOOL_NAME $FILESPOOL_ATTEMPT" >> {out}']
    result = run("work", spool, "--once", "--", *command)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == f"through stdin{name} 1\n"


def test_work_json_lines(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    names = {store.deliver("ok"), store.deliver("fail")}
    log = tmp_path / "runs.log"
    result = subprocess.run(
        [*work(spool, "--once", "--json", "--max-attempts", "1")],
        env=dict(os.environ, LOG=str(log)),
        capture_output=True,
        timeout=120,
    )
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    files = [event for event in events if event["event"] == "file"]
    assert {event["name"] for event in files} == names
    assert sorted(event["status"] for event in files) == ["acked", "failed"]
    assert events[-1]["event"] == "summary"
    assert (events[-1]["acked"], events[-1]["failed"]) == (1, 1)


def test_work_reports_a_job_whose_lease_was_lost(spool: str, tmp_path: Path) -> None:
    """While the command runs, a watchdog takes the claim back (as after a stall past the
    lease): the job is reported as lost, not acked, and the file is run again."""
    store = FileStore(spool)
    name = store.deliver("wait")
    go = tmp_path / "go"
    worker = subprocess.Popen(
        work(spool, "--once", "--json", "--lease", "10m"),
        env=dict(os.environ, LOG=str(tmp_path / "runs.log"), GO=str(go)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while store.names("cur") == []:  # the command is running
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert store.recover(older_than=0).returned == [name]
    go.touch()
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [(e["name"], e["status"]) for e in events[:-1]] == [(name, "lost"), (name, "acked")]
    assert (events[-1]["acked"], events[-1]["lost"]) == (1, 1)
    assert [store.names(folder) for folder in ("new", "cur", "failed")] == [[], [], []]


def test_a_job_whose_file_was_taken_back_before_it_started_is_lost(spool: str) -> None:
    """The hard link that `{}` stands for cannot be made once the claim lost its file."""
    store = FileStore(spool)
    store.deliver("ok")
    claim = store.claim()
    assert claim is not None
    store.recover(older_than=0)
    with pytest.raises(LeaseLost), _input_for(claim, ["cat", "{}"]):
        pass
    assert store.names("tmp") == []


def _start_slow_work(
    spool: str, tmp_path: Path, files: int
) -> tuple[subprocess.Popen[bytes], FileStore, Path]:
    store = FileStore(spool)
    for _ in range(files):
        store.deliver("slow")
    log = tmp_path / "runs.log"
    worker = subprocess.Popen(
        work(spool, "--jobs", "2", "--once"),
        env=dict(os.environ, LOG=str(log), SLOW="3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(store.names("cur")) < 2:  # both workers busy
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return worker, store, log


def test_sigterm_lets_running_commands_finish(spool: str, tmp_path: Path) -> None:
    worker, store, log = _start_slow_work(spool, tmp_path, files=6)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    assert worker.returncode == 0
    assert len(log.read_text().split()) == 2  # only the two running when the signal came
    assert store.names("cur") == []
    assert len(store.names("new")) == 4  # untouched: nothing lost
    assert "acked 2, retried 0, failed 0" in worker.stderr.read().decode()  # type: ignore[union-attr]


def test_a_second_sigterm_aborts_and_gives_files_back(spool: str, tmp_path: Path) -> None:
    worker, store, _ = _start_slow_work(spool, tmp_path, files=6)
    # Two signals sent at once may arrive as one: signal until the abort ends the command.
    deadline = time.monotonic() + 60
    while worker.poll() is None:
        assert time.monotonic() < deadline, "the second SIGTERM did not abort"
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=0.1)
    assert store.names("cur") == []
    assert len(store.names("new")) == 6  # the two aborted ones are back: nothing lost
    assert {store.record(name).attempts for name in store.names("new")} <= {0, 1}


def test_progress_on_a_terminal(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    for _ in range(5):
        store.deliver("ok")
    log = tmp_path / "runs.log"
    command = work(spool, "--once", "--jobs", "2")
    child = pexpect.spawn(
        command[0], command[1:], env=dict(os.environ, LOG=str(log), COLUMNS="120"), timeout=60
    )
    child.expect("working")
    child.expect(r"acked 5, retried 0, failed 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_help_reads_well() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ["init", "put", "ls", "cat", "stats", "recover", "cleanup", "work", "demo"]:
        assert command in result.stdout.decode()
    assert b"-- COMMAND [ARGS...]" in run("work", "--help").stdout


@pytest.mark.parametrize(
    "arguments",
    [
        ("ls", "nope://x"),
        ("ls", "{missing}"),
        ("cat", "{spool}", "../escape"),
        ("work", "{spool}"),
        ("work", "{spool}", "--", "no-such-command-anywhere"),
        ("ls", "{spool}", "--option", "novalue"),
        ("ls", "{spool}", "--option", "anon=true"),
        ("recover", "{spool}", "--older-than", "soon"),
        ("demo", "--messages", "zero"),
    ],
)
def test_bad_input_is_one_clear_line_and_status_2(
    spool: str, tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    filled = [a.format(spool=spool, missing=tmp_path / "missing") for a in arguments]
    result = run(*filled)
    assert result.returncode == 2, filled
    assert b"Traceback" not in result.stderr
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(("filespool: ", "filespool ")), last
