"""Developer tasks: `nox` runs the tests on every Python present, plus lint and typecheck.

Also: `nox -s docs` (the site), `nox -s bench` (benchmarks), `nox -s s3` (LocalStack lane),
`nox -s azure` (Azurite lane), `nox -s mutants` (the mutation check).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
BENCH_PEERS = ["gocept.filestore==1.0", "dirq==1.8", "persist-queue==1.1.0", "matplotlib>=3.8"]
BENCH_S3 = ["moto[s3]>=5.1", "flask!=2.2.0,!=2.2.1", "flask-cors"]  # s3: moto's server, S3 only
# LocalStack without Docker: its own Python 3.13 environment, built once per machine and
# reused by every checkout (a fresh clone need not rebuild it); rebuilt when LOCALSTACK changes.
LOCALSTACK = ["localstack-core[runtime]==2026.3.0", "cbor2<5.7", "service_identity", "pyopenssl<26"]
LOCALSTACK_VENV = Path(
    os.environ.get("FILESPOOL_LOCALSTACK_VENV")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "filespool" / "localstack"
)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, contract, races, docs examples).

    `-- -m "not slow"` leaves out what needs minutes and is the same on every Python (the
    S3 contract on moto, the crash soaks, the contract again on memory, on the local link
    fallback and through the asyncio faces; the local contract stays): CI runs those
    once, on the default Python.
    """
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def mutants(session: nox.Session) -> None:
    """Break the backends and the queue on purpose (tests/mutants.py): each named mutant
    must fail the tests that guard it (`-- --skip-baseline`: without first running the
    unbroken tests, where the suite runs beside it, as in CI)."""
    session.install(".[test,s3]")
    session.run("python", "tests/mutants.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/, the docs' example backend and the tests but Azure's
    ([tool.mypy] in pyproject.toml)."""
    session.install(MYPY, ".[test]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (a broken link or reference fails)."""
    session.install(".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against the system-call floor and the peers (`-- --quick` for a smoke run).

    The s3 section runs moto in-process and LocalStack in its own Python 3.13 environment
    (built on the first run, as for `nox -s s3`); without python3.13 it skips LocalStack.
    The azure section runs Azurite (installed with npm on the first run, as for
    `nox -s azure`).
    """
    session.install(".[s3,azure]", *BENCH_S3, *BENCH_PEERS)
    env: dict[str, str] = {}
    if _runs_section("azure", session.posargs):
        env["FILESPOOL_AZURITE"] = _azurite(session)
    if _runs_section("s3", session.posargs) or _runs_section("s3latency", session.posargs):
        if _localstack_possible():
            env["FILESPOOL_LOCALSTACK_PYTHON"] = _localstack_python(session)
        else:
            session.warn("python3.13 is not available: the s3 benchmarks will skip LocalStack")
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)


def _runs_section(section: str, arguments: list[str]) -> bool:
    """Whether benchmarks/run.py, given these arguments, runs `section` (all by default)."""
    for index, argument in enumerate(arguments):
        if argument == "--sections" and index + 1 < len(arguments):
            return section in arguments[index + 1].split(",")
        if argument.startswith("--sections="):
            return section in argument.removeprefix("--sections=").split(",")
    return True


def _localstack_possible() -> bool:
    """Whether `_localstack_python` finds LocalStack's environment or can build it."""
    ready = LOCALSTACK_VENV / "filespool-ready"
    built = (LOCALSTACK_VENV / "bin" / "python").exists() and ready.exists()
    if built and ready.read_text() == "\n".join(LOCALSTACK):
        return True
    base = shutil.which("python3.13")
    return (
        base is not None
        and subprocess.run([base, "--version"], capture_output=True).returncode == 0
    )


@nox.session
def s3(session: nox.Session) -> None:
    """The S3 backend against LocalStack, which the tests start and stop (needs Python 3.13),
    and the mutants whose tests need LocalStack."""
    python = _localstack_python(session)
    session.install(".[test,s3]")
    env = {"FILESPOOL_LOCALSTACK_PYTHON": python}
    session.run("pytest", "tests/localstack", *session.posargs, env=env)
    if not session.posargs:  # the whole lane: also the mutants only LocalStack can kill
        session.run("python", "tests/mutants.py", "--localstack", env=env)


def _localstack_python(session: nox.Session) -> str:
    """The interpreter of LocalStack's environment, built on the first run."""
    python = LOCALSTACK_VENV.absolute() / "bin" / "python"
    ready = LOCALSTACK_VENV / "filespool-ready"
    if python.exists() and ready.exists() and ready.read_text() == "\n".join(LOCALSTACK):
        return str(python)
    base = shutil.which("python3.13")
    if base is None or subprocess.run([base, "--version"], capture_output=True).returncode != 0:
        session.skip(
            "the S3 lane runs LocalStack, which needs Python 3.13, and python3.13 is not "
            "available here (with pyenv: export PYENV_VERSION=...:3.13.0)"
        )
    session.run(base, "-m", "venv", "--clear", str(LOCALSTACK_VENV), external=True)
    session.run(str(python), "-m", "pip", "install", "--quiet", *LOCALSTACK, external=True)
    ready.write_text("\n".join(LOCALSTACK))
    return str(python)


# Azurite (Azure Storage's emulator, Node.js), installed once per machine with npm and
# reused by every checkout; reinstalled when AZURITE changes.
AZURITE = "azurite@3.37.0"
AZURITE_PREFIX = Path(
    os.environ.get("FILESPOOL_AZURITE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "filespool" / "azurite"
)


@nox.session
def azure(session: nox.Session) -> None:
    """The Azure backend against Azurite, which the tests start and stop (needs Node.js and
    npm; Azurite is installed on the first run)."""
    prefix = _azurite(session)
    session.install(".[test,azure]")
    session.run("pytest", "tests/azure", *session.posargs, env={"FILESPOOL_AZURITE": prefix})


def _azurite(session: nox.Session) -> str:
    """The npm --prefix folder of Azurite, installed on the first run."""
    prefix = AZURITE_PREFIX.absolute()
    ready = prefix / "filespool-ready"
    command = prefix / "node_modules" / ".bin" / "azurite-blob"
    if command.exists() and ready.exists() and ready.read_text() == AZURITE:
        return str(prefix)
    npm = shutil.which("npm")
    if npm is None:
        session.skip("the Azure lane runs Azurite, which needs Node.js and npm: install them")
    prefix.mkdir(parents=True, exist_ok=True)
    session.run(
        npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", AZURITE, external=True
    )
    ready.write_text(AZURITE)
    return str(prefix)
