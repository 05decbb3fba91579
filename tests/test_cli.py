"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from filespool import FileStore, LeaseLost
from filespool.work import _input_for
from s3_launch import moto_server
from s3_servers import new_bucket

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
    assert {event["reason"] for event in files} == {None, "exit status 3"}
    assert sorted(event["status"] for event in files) == ["acked", "failed"]
    assert events[-1]["event"] == "summary"
    assert (events[-1]["acked"], events[-1]["failed"]) == (1, 1)


def test_work_reports_a_job_whose_lease_was_lost(spool: str, tmp_path: Path) -> None:
    """While the command runs, a watchdog takes the claim back (as after a stall past the
    lease): the job is reported as lost, not acked, and the file is run again."""
    store = FileStore(spool)
    name = store.deliver("wait")
    go, log = tmp_path / "go", tmp_path / "runs.log"
    worker = subprocess.Popen(
        work(spool, "--once", "--json", "--lease", "10m"),
        env=dict(os.environ, LOG=str(log), GO=str(go)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    # The command has started once it logs (a file merely claimed, not yet started, would
    # be lost at once, and `--once` could find nothing waiting while the recovery below
    # has the file between cur/ and new/, and end).
    while not log.exists() or not log.read_text():
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
    # Both commands started (each logs its file first). Two files in cur/ would not say
    # it: `work` claims for both of its idle workers at once, before either starts.
    while not log.exists() or len(log.read_text().split()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return worker, store, log


def test_sigterm_lets_running_commands_finish(spool: str, tmp_path: Path) -> None:
    worker, store, log = _start_slow_work(spool, tmp_path, files=6)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM  # stopped by a signal: 143, not 0
    assert len(log.read_text().split()) == 2  # only the two running when the signal came
    assert store.names("cur") == []
    assert len(store.names("new")) == 4  # untouched: nothing lost
    stderr = worker.stderr.read().decode()  # type: ignore[union-attr]
    assert "stopping: taking no new files, letting 2 running command(s) finish" in stderr
    assert "acked 2, retried 0, failed 0" in stderr


def test_a_second_sigterm_aborts_and_gives_files_back(spool: str, tmp_path: Path) -> None:
    worker, store, _ = _start_slow_work(spool, tmp_path, files=6)
    # Two signals sent at once may arrive as one: the second goes once the first is heard.
    worker.send_signal(signal.SIGTERM)
    assert worker.stderr is not None
    assert worker.stderr.readline().startswith(b"stopping: taking no new files")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM
    assert store.names("cur") == []
    assert len(store.names("new")) == 6  # the two aborted ones are back: nothing lost
    # An abort is no failed try: it must not push files towards dead-lettering.
    assert {store.record(name).attempts for name in store.names("new")} == {0}
    assert "stopped 2" in worker.stderr.read().decode()


def test_progress_on_a_terminal(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    for _ in range(5):
        store.deliver("ok")
    log = tmp_path / "runs.log"
    command = work(spool, "--once", "--jobs", "2")
    child = pexpect.spawn(
        command[0], command[1:], env=dict(os.environ, LOG=str(log), COLUMNS="80"), timeout=60
    )
    child.expect("working")
    child.expect(r"5/5")  # the total is not cut at 80 columns
    child.expect(r"acked 5, retried 0, failed 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_help_reads_well() -> None:
    result = run("--help")
    assert result.returncode == 0
    commands = ["init", "put", "ls", "cat", "stats", "recover", "cleanup", "failed", "requeue"]
    for command in [*commands, "work", "demo"]:
        assert command in result.stdout.decode()
    assert b"-- COMMAND [ARGS...]" in run("work", "--help").stdout
    assert run("--version").stdout.decode().startswith("filespool ")
    recover = run("recover", "--help").stdout.decode()
    assert "the lease: a claim not renewed" in recover
    assert "tries before failed/" in recover
    assert "as `ls` shows it" in run("cat", "--help").stdout.decode()
    assert "durable=false" in run("put", "--help").stdout.decode()


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
        ("work", "{spool}", "--lease", "0", "--", "true"),
        ("work", "{spool}", "--lease", "0.5", "--", "true"),
        ("work", "{spool}", "--lease", "31d", "--", "true"),
        ("work", "{spool}", "--timeout", "0", "--", "true"),
        ("work", "{spool}", "--json", "--output", "inherit", "--", "true"),
        ("work", "{spool}", "--results", "{missing}", "--output", "discard", "--", "true"),
        ("recover", "{spool}", "--older-than", "1h", "-o", "max_attempts=2"),
        ("init", ""),
        ("init", "memory://jobs"),
        ("put", "memory://jobs", "-"),
        ("ls", "memory://jobs"),
        ("requeue", "{spool}"),
        ("requeue", "{spool}", "nosuch"),
        ("put", "{spool}", "-", "-"),
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


def _one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 2, result.stdout
    assert b"Traceback" not in result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_memory_runs_the_demo_in_threads_and_is_refused_elsewhere() -> None:
    result = run("demo", "--url", "memory://jobs", "--messages", "200", "--consumers", "3")
    assert result.returncode == 0, result.stderr
    assert "consumer threads" in result.stdout.decode()
    assert "exactly once: yes" in result.stdout.decode()
    assert b"Traceback" not in result.stderr
    line = _one_line_error(run("init", "memory://jobs"))
    assert "lives inside one process" in line


def test_an_empty_location_makes_no_spool(tmp_path: Path) -> None:
    """An unset $SPOOL must not turn the working directory into a spool."""
    result = subprocess.run([*FILESPOOL, "init", ""], cwd=tmp_path, capture_output=True, timeout=60)
    assert "the location is empty" in _one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_messages_say_what_to_do(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    assert f"run `filespool init {missing}` first" in _one_line_error(run("ls", missing))
    (tmp_path / "f.txt").write_text("x")
    line = _one_line_error(run("ls", str(tmp_path / "f.txt")))
    assert "f.txt is a file, not a directory" in line
    spool = str(tmp_path / "spool")
    run("init", spool)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 0\n")  # not executable
    assert "is not executable" in _one_line_error(run("work", spool, "--", str(script)))


def test_put_checks_every_input_before_delivering_any(spool: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    line = _one_line_error(run("put", spool, str(tmp_path / "a.txt"), str(tmp_path / "no.txt")))
    assert "no.txt" in line
    assert FileStore(spool).names("new") == []  # a.txt was not delivered either


def test_put_lines_delivers_one_message_per_line(spool: str) -> None:
    result = run("put", spool, "--lines", stdin=b"one\ntwo\n\nthree\n")
    assert result.returncode == 0, result.stderr
    names = result.stdout.decode().split()
    store = FileStore(spool)
    assert [store.read(name, "new") for name in names] == [b"one", b"two", b"", b"three"]


def test_ls_null_separates_paths(spool: str) -> None:
    store = FileStore(spool)
    names = sorted(store.deliver(b"x") for _ in range(3))
    out = run("ls", spool, "-0").stdout.decode()
    assert out == "".join(f"{spool}/new/{name}\0" for name in names)


def test_init_private_keeps_the_spool_to_its_owner(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert run("init", str(spool), "--private").returncode == 0
    assert run("put", str(spool), "-o", "private=true", "-", stdin=b"x").returncode == 0
    assert {p.stat().st_mode & 0o777 for p in [spool, *spool.iterdir()]} == {0o700}
    assert {p.stat().st_mode & 0o777 for p in (spool / "new").iterdir()} == {0o600}


def test_dead_letters_are_listed_with_their_reason_and_requeued(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    crashed, failed = store.deliver("crash"), store.deliver("fail")
    log = tmp_path / "runs.log"
    result = subprocess.run(
        work(spool, "--once", "--max-attempts", "2"),
        env=dict(os.environ, LOG=str(log)),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    rows = [line.split("\t") for line in run("failed", spool).stdout.decode().splitlines()]
    assert sorted(rows) == sorted(
        [
            [crashed, "2", "gave up after 2 attempts (killed by SIGKILL)"],
            [failed, "2", "gave up after 2 attempts (exit status 3)"],
        ]
    )
    assert json.loads(run("failed", spool, "--json").stdout.splitlines()[0])["attempts"] == 2
    assert run("requeue", spool, crashed).stdout.decode() == f"requeued {crashed}\n"
    assert run("requeue", spool, "--all").stdout.decode() == f"requeued {failed}\n"
    assert store.names("failed") == []
    assert sorted(name.split(":")[0] for name in store.names("new")) == sorted([crashed, failed])
    assert {store.record(name).attempts for name in (crashed, failed)} == {0}


def test_a_command_that_runs_too_long_is_killed_and_counted(spool: str) -> None:
    store = FileStore(spool)
    name = store.deliver(b"x")
    result = run(
        "work", spool, "--once", "--timeout", "0.5", "--max-attempts", "1", "--", "sleep", "60"
    )
    assert result.returncode == 1, result.stderr
    assert store.names("failed") == [name]
    assert store.record(name).reason == "gave up after 1 attempt (timed out after 0.5 s)"


def test_json_output_stays_clean_of_the_commands_output(spool: str) -> None:
    """`work --json | jq` must work: commands' output goes to standard error."""
    store = FileStore(spool)
    names = {store.deliver(b"x") for _ in range(3)}
    result = run("work", spool, "--once", "--json", "-j", "2", "--", "echo", "processed", "{}")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert {event["name"] for event in events if event["event"] == "file"} == names
    assert result.stderr.decode().count("processed ") == 3


def test_grouped_output_keeps_each_jobs_lines_together(spool: str) -> None:
    store = FileStore(spool)
    for _ in range(6):
        store.deliver(b"x")
    job = 'for i in 1 2 3; do echo "$FILESPOOL_NAME $i"; sleep 0.05; done'
    result = run("work", spool, "--once", "-q", "-j", "3", "--", "sh", "-c", job)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 18
    for start in range(0, 18, 3):  # each job's three lines in a row, not interleaved
        group = [line.split() for line in lines[start : start + 3]]
        assert {name for name, _ in group} == {group[0][0]}
        assert [number for _, number in group] == ["1", "2", "3"]
    discarded = run("work", spool, "--once", "-q", "--output", "discard", "--", "echo", "x")
    assert discarded.stdout == b""


def test_results_keep_each_jobs_output_in_files(spool: str, tmp_path: Path) -> None:
    store = FileStore(spool)
    names = sorted(store.deliver(b"x") for _ in range(3))
    results = tmp_path / "results"
    job = 'echo "out $FILESPOOL_NAME"; echo "err $FILESPOOL_NAME" >&2'
    result = run("work", spool, "--once", "-q", "--results", str(results), "--", "sh", "-c", job)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == (b"", b"")
    assert sorted(path.name for path in results.iterdir()) == sorted(
        f"{name}{suffix}" for name in names for suffix in (".out", ".err")
    )
    for name in names:
        assert (results / f"{name}.out").read_text() == f"out {name}\n"
        assert (results / f"{name}.err").read_text() == f"err {name}\n"


def test_a_killed_worker_takes_its_commands_with_it(spool: str, tmp_path: Path) -> None:
    FileStore(spool).deliver(b"x")
    pid_file = tmp_path / "pid"
    worker = subprocess.Popen(
        [*FILESPOOL, "work", spool, "--", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    command = _pid_written_to(pid_file)
    worker.kill()  # SIGKILL: no handler runs
    worker.wait()
    deadline = time.monotonic() + 60
    while _alive(command):
        assert time.monotonic() < deadline, "the command outlived its worker"
        time.sleep(0.02)


def _pid_written_to(pid_file: Path) -> int:
    """The process id a command wrote into `pid_file`, once it has."""
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)
    return int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (("ls", "s3://Bad_Bucket!/x"), "is not an S3 bucket name"),
        (("ls", "s3://bucket/x", "-o", "profile=nosuch"), "nosuch"),
        (("ls", "s3://bucket/x", "-o", "key=abc"), "secret"),
        (("ls", "s3://bucket/x", "-o", "client_kwargs={bad"), "must be a mapping"),
        (("ls", "s3://bucket/x", "-o", "endpoint_url=ftp://127.0.0.1:5055"), "not an http"),
        (("ls", "s3://bucket/x", "-o", "endpoint_url=5"), "must be a string"),
        (("ls", "s3://bucket/x", "-o", "key=123", "-o", "secret=x"), "quote it as JSON"),
        (("recover", "s3://b/x", "--older-than", "1h", "-o", "max_attempts=2"), "--max-attempts"),
        (("ls", "s3://bucket/x", "-o", "frobnicate=1"), "unknown S3 storage option"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value[2:]) or value[1],
)
def test_s3_option_mistakes_are_one_line_and_status_2(
    arguments: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    environment = dict(os.environ, HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"))
    environment.pop("AWS_PROFILE", None)
    result = subprocess.run(
        [*FILESPOOL, *arguments], capture_output=True, timeout=120, env=environment
    )
    assert says in _one_line_error(result)


def test_errors_name_the_endpoint_in_use(moto: str) -> None:
    """The endpoint may come from the environment (FSSPEC_S3_ENDPOINT_URL), not an option."""
    environment = dict(os.environ, FSSPEC_S3_ENDPOINT_URL=moto, **S3_CREDENTIALS)
    result = subprocess.run(
        [*FILESPOOL, "ls", "s3://no-such-bucket-here/x"],
        capture_output=True,
        timeout=120,
        env=environment,
    )
    line = _one_line_error(result)
    assert "does not exist at" in line
    assert moto in line
    assert "default AWS endpoint" not in line


def test_remote_copies_leave_nothing_behind_even_after_sigkill(moto: str, tmp_path: Path) -> None:
    bucket = new_bucket(moto)
    url = f"s3://{bucket}/spool"
    options = ["-o", f"endpoint_url={moto}", "-o", "key=test", "-o", "secret=test"]
    assert run("init", url, *options).returncode == 0
    run("put", url, *options, "-", stdin=b"payload")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    worker = subprocess.Popen(
        [*FILESPOOL, "work", url, *options, "--", "sh", "-c", f"cat {{}} > {out}; sleep 60"],
        env=dict(os.environ, TMPDIR=str(scratch)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not out.exists() or out.read_bytes() != b"payload":
        assert time.monotonic() < deadline, "the command never read its copy"
        time.sleep(0.02)
    worker.kill()
    worker.wait()
    assert list(scratch.iterdir()) == []  # the copy had no name to leave behind


def test_a_command_whose_lease_is_lost_is_stopped(spool: str, tmp_path: Path) -> None:
    """When a renewal finds the claim taken over, the command must not run on beside the
    next claim of its file: it is stopped, and the job reported lost."""
    store = FileStore(spool)
    name = store.deliver(b"x")
    marker, pid_file = tmp_path / "ran-once", tmp_path / "pid"
    job = f"[ -e {marker} ] && exit 0; touch {marker}; echo $$ > {pid_file}; exec sleep 60"
    worker = subprocess.Popen(
        [*FILESPOOL, "work", spool, "--once", "--json", "--lease", "3s", "--", "sh", "-c", job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    command = _pid_written_to(pid_file)
    assert store.recover(older_than=0).returned == [name]  # taken over while it runs
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    assert not _alive(command)
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [(e["name"], e["status"]) for e in events[:-1]] == [(name, "lost"), (name, "acked")]


def test_a_remote_copy_is_read_from_its_start_by_descriptor(tmp_path: Path) -> None:
    """`{}` for a remote file is /dev/fd/N: N is above the standard streams, and a command
    reading descriptor N itself (not reopening the path) reads the whole file."""
    store = FileStore(f"memory://cli-{tmp_path.name}")
    store.prepare()
    store.deliver(b"payload")
    claim = store.claim()
    assert claim is not None
    with _input_for(claim, ["cat", "{}"]) as (arguments, _, kept):
        [descriptor] = kept
        assert descriptor > 2
        assert arguments == ["cat", f"/dev/fd/{descriptor}"]
        assert os.read(descriptor, 100) == b"payload"
    claim.ack()
