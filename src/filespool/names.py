"""File names: validation, and generation of unique maildir-style names."""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
import threading
import time
import unicodedata

from filespool.errors import InvalidName

MAX_NAME_BYTES = 255
"""The longest file name, in UTF-8 bytes, that every backend takes."""
MAX_MESSAGE_NAME_BYTES = MAX_NAME_BYTES - 21
"""The longest message name: room is left for `:` and a generation of up to 20 digits."""
GENERATION_MARK = ":"
"""Between a message's name and its generation in a file name, as in `job-17:3`."""
_PATH_CHARACTERS = ("/", "\\", "\0")
_UNSAFE_HOST_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


def validate_name(name: object) -> str:
    """Return `name` if it is a safe bare file name, else raise `InvalidName`.

    A safe name is a non-empty string without `/`, `\\`, control characters or `:`
    (which marks a generation, see `file_name`), does not start with `.` (which also
    rules out `.` and `..`; dotfiles are reserved for staging), and is at most
    `MAX_MESSAGE_NAME_BYTES` in UTF-8 (255 less room for a generation).
    """
    if not isinstance(name, str):
        raise InvalidName(f"a file name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName("a file name must not be empty")
    for character in _PATH_CHARACTERS:
        if character in name:
            raise InvalidName(f"file name {name!r} contains {character!r}; pass a bare name")
    if any(unicodedata.category(character) == "Cc" for character in name):
        raise InvalidName(
            f"file name {name!r} contains a control character (a newline, a tab, ...), "
            "which would break listings one name per line"
        )
    if GENERATION_MARK in name:
        raise InvalidName(
            f"name {name!r} contains {GENERATION_MARK!r}, which file names use to mark a "
            "generation (`name:N`); choose a message name without it"
        )
    if name.startswith("."):
        raise InvalidName(f"file name {name!r} starts with '.'; such names are reserved")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(f"file name {name!r} cannot be encoded as UTF-8") from None
    if size > MAX_MESSAGE_NAME_BYTES:
        raise InvalidName(
            f"name is {size} bytes in UTF-8; the limit is {MAX_MESSAGE_NAME_BYTES} (255 less "
            "room for a generation)"
        )
    return name


def file_name(message: str, generation: int) -> str:
    """The file name of a message's `generation`: the bare name for 0, else `name:N`.

    A message gets a new generation whenever its claim is renewed or given back, so
    each claim holds a file name no other claim of the message ever holds.
    """
    return message if generation == 0 else f"{message}{GENERATION_MARK}{generation}"


def split_file_name(name: str) -> tuple[str, int]:
    """A file name's message name and generation (`job:3` -> `("job", 3)`).

    Raises `InvalidName` for a name that is neither a message name nor `name:N`.
    """
    message, mark, generation = name.rpartition(GENERATION_MARK)
    if not mark:
        return validate_name(name), 0
    if not is_generation(generation):
        raise InvalidName(
            f"file name {name!r} has {GENERATION_MARK!r} but not as `name:N` with N a "
            "generation (1, 2, ...); message names cannot contain it"
        )
    return validate_name(message), int(generation)


def is_generation(text: str) -> bool:
    """Whether `text` is a generation as file names write it: 1, 2, ... (ASCII digits)."""
    return text.isascii() and text.isdigit() and not text.startswith("0")


def validate_file_name(name: object) -> str:
    """Return `name` if it is a message name or `name:N`, else raise `InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"a file name must be a str, not {type(name).__name__}")
    split_file_name(name)
    return name


class _NameGenerator:
    """Makes `<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>` names.

    The leading seconds (ten digits until the year 2286) and zero-padded
    microseconds make names sort by creation time, so `names('new')` is
    roughly first-in first-out. Host, pid, a per-process counter and 64 random
    bits keep names unique across processes and machines.
    """

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._host = _UNSAFE_HOST_CHARACTERS.sub("-", socket.gethostname())[:64] or "localhost"
        self._last_microseconds = 0
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh in a new process: its own process id, and a lock no thread holds."""
        # A fork while another thread holds the lock would leave the child's copy locked forever.
        self._lock = threading.Lock()
        self._process = f"P{os.getpid()}Q"

    def __call__(self) -> str:
        with self._lock:
            # Strictly increasing within a process, even when the clock has not
            # moved (or stepped back), so names made here sort in creation order.
            microseconds = time.time_ns() // 1000
            if microseconds <= self._last_microseconds:
                microseconds = self._last_microseconds + 1
            self._last_microseconds = microseconds
            count = next(self._counter)
        seconds, fraction = divmod(microseconds, 1_000_000)
        # random, not secrets: no system call per name; the child of a fork is reseeded,
        # and host, pid and counter already make the name unique. %-formatting: quicker
        # than an f-string with format specs, on every delivery.
        noise = random.getrandbits(64)
        return "%d.M%06d%s%dR%016x.%s" % (  # noqa: UP031
            seconds,
            fraction,
            self._process,
            count,
            noise,
            self._host,
        )

    def staging(self) -> str:
        """A name unique among this host's processes, quicker to make than a full one."""
        return f"{self._process}{next(self._counter)}.{self._host}"


unique_name = _NameGenerator()
"""Return a new unique, time-sortable file name (see `_NameGenerator`)."""

staging_name = unique_name.staging
"""Return a name for a file being written: unique on this host, but not across hosts
that share a folder and a host name (an exclusive create catches that)."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=unique_name.after_fork)
