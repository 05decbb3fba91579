"""The local POSIX backend: folders are directories, moves are no-replace renames."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO

from filespool._locks import ProcessLock
from filespool.backends.base import STAGING_FOLDER, Backend, Entry
from filespool.errors import (
    AlreadyExists,
    ExclusiveMoveUnavailable,
    FileStoreError,
    NotFound,
    NotPrepared,
)
from filespool.names import staging_name, unique_name

_RENAME_NOREPLACE = 1
# Errors by which a filesystem says "this rename flag (or link) is not supported here".
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_SYNC_FILE_RANGE_WRITE = 2
_FIRST_READ = 65536  # a larger first read would allocate (and free) more for small files


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's renameat2(), or None where the C library lacks it (macOS, old musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    # No argtypes: every call passes (int, bytes, int, bytes, int), which ctypes converts
    # as C needs, and checking declared types would cost a claim about a microsecond.
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


class LocalBackend(Backend):
    """Files in directories on a local (or network) POSIX filesystem.

    A move is `renameat2(RENAME_NOREPLACE)`: atomic, and refused with
    `EEXIST` when the destination exists. Where the filesystem refuses the
    flag (NFS, or a C library without `renameat2`), a move is maildir's
    `link()` + `unlink()`: still exclusive (`link` never replaces), but
    for an instant the file has both names, and a crash between the two calls
    leaves it in both folders. If neither method works a move raises
    `ExclusiveMoveUnavailable`; it never overwrites.

    The folders are opened once and the hot calls are made relative to them (`openat`,
    `renameat2`, `unlinkat`): the kernel then walks no path but the file's name. A
    folder's path is compared with its descriptor once a second, so a spool removed and
    made again is found within a second; one renamed away keeps this process's files
    until then.
    """

    def __init__(self, root: str | os.PathLike[str], *, private: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.private = private
        # Permissions before the umask: 0644/0755 under the usual umask 022 by default;
        # private spools keep their files to their owner, as mail delivery agents do.
        self._file_mode = 0o600 if private else 0o666
        self._folder_mode = 0o700 if private else 0o777
        self._use_renameat2 = _renameat2 is not None
        # Folders seen to exist: a missing file in them is then NotFound without a stat.
        self._present: set[str] = set()
        self._open_descriptors()

    def _open_descriptors(self) -> None:
        self._descriptors: dict[str, int] = {}  # of the folders, opened on first use
        self._replaced: list[int] = []  # of folders replaced since: another thread may use one
        self._descriptor_lock = ProcessLock()
        self._next_check = 0.0
        weakref.finalize(self, _close_all, self._descriptors, self._replaced)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for per_process in ("_descriptors", "_replaced", "_descriptor_lock", "_next_check"):
            del state[per_process]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_descriptors()

    def __repr__(self) -> str:
        return f"LocalBackend({self.root!r})"

    @property
    def url(self) -> str:
        return "file://" + self.root

    def folder_path(self, folder: str) -> str:
        return os.path.join(self.root, folder)

    def _path(self, folder: str, name: str) -> str:
        return f"{self.root}/{folder}/{name}"  # folder and name are validated: nothing to join

    def _folder(self, folder: str) -> int:
        """The descriptor of `folder`; `NotPrepared` if there is no such folder."""
        try:
            return self._descriptors[folder]
        except KeyError:
            return self._open_folder(folder)

    def _open_folder(self, folder: str) -> int:
        with self._descriptor_lock:
            if folder in self._descriptors:
                return self._descriptors[folder]
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            try:
                descriptor = os.open(self.folder_path(folder), flags)
            except (FileNotFoundError, NotADirectoryError):
                self._present.discard(folder)
                self._check_prepared(folder)
                raise
            self._descriptors[folder] = descriptor
            return descriptor

    def _check_descriptors(self) -> None:
        """Let go of the descriptors of folders that are no longer at their paths (looked
        at once a second, by deliveries and listings: a claimer lists between batches)."""
        if time.monotonic() < self._next_check:
            return
        with self._descriptor_lock:
            self._next_check = time.monotonic() + 1.0
            for folder, descriptor in list(self._descriptors.items()):
                held = os.fstat(descriptor)
                try:
                    found = os.stat(self.folder_path(folder))
                except OSError:
                    found = None
                if found is None or (found.st_dev, found.st_ino) != (held.st_dev, held.st_ino):
                    self._present.discard(folder)
                    self._replaced.append(self._descriptors.pop(folder))

    def create_folders(self, folders: Iterable[str]) -> None:
        for path in (self.root, *map(self.folder_path, folders)):
            try:
                os.makedirs(path, mode=self._folder_mode, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise _not_a_directory(path) from None
            if self.private:
                os.chmod(path, self._folder_mode)  # also for folders made before

    def list_names(self, folder: str) -> list[str]:
        return list(self.iter_names(folder))

    def iter_names(self, folder: str) -> Iterator[str]:
        self._check_descriptors()
        with self._errors(folder):
            entries = os.scandir(self.folder_path(folder))  # here, so NotPrepared comes now
        return _regular_files(entries)

    def scan(self, folder: str) -> list[Entry]:
        found = []
        with self._errors(folder), os.scandir(self.folder_path(folder)) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    try:
                        # rename() and link() set ctime, and nothing but the kernel can:
                        # a claim's time cannot be lost or forged by copying the file.
                        changed = entry.stat(follow_symlinks=False).st_ctime
                    except FileNotFoundError:
                        continue  # moved away since the directory was read
                    found.append(Entry(entry.name, changed))
        return found

    def info(self, folder: str, name: str) -> Entry:
        with self._errors(folder, name):
            status = os.lstat(self._path(folder, name))
        if not stat.S_ISREG(status.st_mode):
            raise NotFound.file(name, folder, self.url)
        return Entry(name, status.st_ctime)

    def exists(self, folder: str, name: str) -> bool:
        try:
            mode = os.lstat(self._path(folder, name)).st_mode
        except FileNotFoundError:
            self._check_prepared(folder)
            return False
        return stat.S_ISREG(mode)

    def create(self, folder: str, name: str) -> BinaryIO:
        with self._errors(folder, name):  # "x": O_CREAT | O_EXCL, never truncates
            return open(self._path(folder, name), "xb", opener=self._open_private_or_not)

    def _open_private_or_not(self, path: str, flags: int) -> int:
        return os.open(path, flags, self._file_mode)

    def open(self, folder: str, name: str) -> BinaryIO:
        try:
            return open(self._path(folder, name), "rb")
        except FileNotFoundError:
            raise self._missing(folder, name) from None

    def read(self, folder: str, name: str) -> bytes:
        try:
            descriptor = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._folder(folder))
        except FileNotFoundError:
            raise self._missing(folder, name) from None
        try:
            # A regular file reads short only at its end: most messages take one read.
            first = os.read(descriptor, _FIRST_READ)
            if len(first) < _FIRST_READ:
                return first
            chunks = [first]
            while chunk := os.read(descriptor, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(descriptor)
        return b"".join(chunks)

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        self._publish(self._stage_bytes(data, durable=durable), folder, name, durable=durable)
        return False  # one system call publishes: never sent twice

    def put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        # Every file written, its writeback started at once (sync_file_range), and only
        # then each fsynced: the disk works on all of them together, and the fsyncs mostly
        # wait for writes already under way. Then each is published, and the folder
        # flushed once.
        staged: list[str] = []
        descriptors: list[int] = []
        try:
            for _, data in items:
                stage, descriptor = self._create_staged()
                staged.append(stage)
                descriptors.append(descriptor)
                _write_all(descriptor, data)
                if durable:
                    _start_writeback(descriptor)
            if durable:
                for descriptor in descriptors:
                    os.fsync(descriptor)
        except BaseException:
            for stage in staged:
                self._unstage(stage)
            raise
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        results: list[bool | FileStoreError] = []
        for index, ((name, _), stage) in enumerate(zip(items, staged, strict=True)):
            try:
                self._move(STAGING_FOLDER, stage, folder, name)
            except FileStoreError as error:
                self._unstage(stage)
                results.append(error)
            except BaseException:
                for unpublished in staged[index:]:
                    self._unstage(unpublished)
                raise
            else:
                results.append(False)
        if durable and False in results:
            os.fsync(self._folder(folder))
        return results

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        with self._errors(source, name), open(self._path(source, name), "rb") as original:
            staged = self._stage(lambda file: shutil.copyfileobj(original, file), durable=durable)
        self._publish(staged, destination, name, durable=durable)

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        self._move(source, name, destination, new_name or name)

    def remove(self, folder: str, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._folder(folder))
        except FileNotFoundError:
            raise self._missing(folder, name) from None

    def discard(self, folder: str, name: str) -> None:
        try:  # noqa: SIM105 - on every ack: a bare try is cheaper than contextlib.suppress
            os.unlink(name, dir_fd=self._folder(folder))
        except (FileNotFoundError, NotPrepared):
            pass  # no file, or no folder: nothing to do

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        staged = self._stage_bytes(data, durable=durable)
        try:
            with self._errors(folder, name):
                os.replace(
                    staged,
                    name,
                    src_dir_fd=self._folder(STAGING_FOLDER),
                    dst_dir_fd=self._folder(folder),
                )
        except BaseException:
            self._unstage(staged)
            raise
        if durable:
            os.fsync(self._folder(folder))

    def same_file(self, first: str, second: str, name: str) -> bool:
        try:
            return os.path.samefile(self._path(first, name), self._path(second, name))
        except FileNotFoundError:
            return False

    def _create_staged(self, *, again: bool = False) -> tuple[str, int]:
        """Create a new hidden file in the staging folder; return its name and descriptor."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._check_descriptors()
        staging = self._folder(STAGING_FOLDER)
        name = f".stage.{staging_name()}"
        try:
            try:
                return name, os.open(name, flags, self._file_mode, dir_fd=staging)
            except FileExistsError:
                # Left by an earlier process with our id, or made by a host with our name
                # sharing this folder: a fully unique name settles it.
                name = f".stage.{unique_name()}"
                return name, os.open(name, flags, self._file_mode, dir_fd=staging)
        except FileNotFoundError:  # the folder was removed since it was opened
            self._next_check = 0.0
            self._check_descriptors()
            if not again and STAGING_FOLDER not in self._descriptors:  # made anew, perhaps
                return self._create_staged(again=True)
            raise self._missing(STAGING_FOLDER, name) from None

    def _unstage(self, name: str) -> None:
        os.unlink(name, dir_fd=self._folder(STAGING_FOLDER))

    def _stage(self, write: Callable[[BinaryIO], object], *, durable: bool) -> str:
        """Write a hidden file in the staging folder; return its name."""
        path, descriptor = self._create_staged()
        try:
            with open(descriptor, "wb") as file:
                write(file)
                if durable:
                    file.flush()
                    os.fsync(file.fileno())
        except BaseException:
            self._unstage(path)
            raise
        return path

    def _stage_bytes(self, data: bytes, *, durable: bool) -> str:
        """`_stage` for bytes, with plain system calls: deliveries are mostly this."""
        stage, descriptor = self._create_staged()
        try:
            _write_all(descriptor, data)
            if durable:
                os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            self._unstage(stage)
            raise
        os.close(descriptor)
        return stage

    def _publish(self, staged: str, folder: str, name: str, *, durable: bool) -> None:
        try:
            self._move(STAGING_FOLDER, staged, folder, name)
        except BaseException:
            self._unstage(staged)
            raise
        if durable:
            os.fsync(self._folder(folder))  # the new name made durable

    def _move(self, source_folder: str, source: str, folder: str, name: str) -> None:
        """Move `source_folder/source` to `folder/name`, never over an existing file."""
        if self._use_renameat2:
            # Inline, with no context manager: a claim is mostly this call, and so is a lost race.
            assert _renameat2 is not None
            if not _renameat2(
                self._folder(source_folder),
                source.encode(_FS_ENCODING, _FS_ERRORS),  # what os.fsencode does, minus a call
                self._folder(folder),
                name.encode(_FS_ENCODING, _FS_ERRORS),
                _RENAME_NOREPLACE,
            ):
                return
            code = ctypes.get_errno()
            if code == errno.ENOENT:
                raise self._missing(source_folder, source, destination=folder)
            if code == errno.EEXIST:
                raise AlreadyExists.file(name, folder, self.url)
            if code not in _UNSUPPORTED:
                raise OSError(
                    code,
                    os.strerror(code),
                    self._path(source_folder, source),
                    None,
                    self._path(folder, name),
                )
            # NFS and some FUSE filesystems reject every flag; remember, and use links.
            self._use_renameat2 = False
        with self._errors(source_folder, source, destination=folder):
            self._link_then_unlink(self._path(source_folder, source), self._path(folder, name))

    @staticmethod
    def _link_then_unlink(source: str, target: str) -> None:
        try:
            os.link(source, target)  # link() never replaces an existing name
        except OSError as error:
            if error.errno in _UNSUPPORTED or error.errno == errno.EPERM:
                raise ExclusiveMoveUnavailable(
                    f"{os.path.dirname(target)!r} supports neither renameat2(RENAME_NOREPLACE) "
                    "nor hard links, so filespool cannot move files there without risking an "
                    "overwrite; put the spool on another filesystem"
                ) from error
            raise
        try:
            os.unlink(source)
        except FileNotFoundError:
            # Between our link and this unlink another mover (to another name) or a remover
            # took the source: that one won. Our link is a second name of a file that is
            # gone or lives on elsewhere, so it goes; the caller sees a lost race.
            with suppress(FileNotFoundError):
                os.unlink(target)
            raise

    @contextmanager
    def _errors(
        self, folder: str, name: str | None = None, *, destination: str | None = None
    ) -> Iterator[None]:
        """Translate OSError into filespool's errors for an operation on `folder/name`."""
        try:
            yield
        except FileNotFoundError:
            if name is None:
                self._check_prepared(folder)
                raise
            raise self._missing(folder, name, destination=destination) from None
        except FileExistsError:
            where = destination if destination is not None else folder
            raise AlreadyExists.file(str(name), where, self.url) from None
        except NotADirectoryError:
            self._check_prepared(folder)  # the root, or a folder, is a file
            raise

    def _missing(self, folder: str, name: str, *, destination: str | None = None) -> NotFound:
        """The error for a missing `folder/name`; raises NotPrepared if a folder is missing."""
        self._check_prepared(folder)
        if destination is not None:
            self._check_prepared(destination)
        return NotFound.file(name, folder, self.url)

    def _check_prepared(self, folder: str) -> None:
        if folder in self._present:
            return
        if not os.path.isdir(self.folder_path(folder)):
            for path in (self.root, self.folder_path(folder)):
                if os.path.lexists(path) and not os.path.isdir(path):
                    raise _not_a_directory(path)
            raise NotPrepared.folder(folder, self.url)
        self._present.add(folder)


def _regular_files(entries: Any) -> Iterator[str]:
    with entries:
        for entry in entries:
            # is_file(follow_symlinks=False) is answered from d_type: no stat per entry.
            if entry.is_file(follow_symlinks=False):
                yield entry.name


def _write_all(descriptor: int, data: bytes) -> None:
    written = os.write(descriptor, data)
    while written < len(data):
        written += os.write(descriptor, data[written:])


def _load_sync_file_range() -> Callable[[int], object]:
    """Start writing a file's dirty pages back, without waiting (Linux); else do nothing."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda descriptor: None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return lambda descriptor: function(descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _load_sync_file_range()


def _close_all(descriptors: dict[str, int], replaced: list[int]) -> None:
    """Close a backend's descriptors of folders (when it is garbage-collected)."""
    for descriptor in [*descriptors.values(), *replaced]:
        with suppress(OSError):
            os.close(descriptor)


def _not_a_directory(path: str) -> NotPrepared:
    return NotPrepared(
        f"{path} is a file, not a directory: a spool needs a directory of its own; choose "
        "another location"
    )


def open_local(location: str, *, private: bool = False, **storage_options: Any) -> LocalBackend:
    """The factory for plain paths and `file://` URLs; its one option is `private`
    (files 0600 and folders 0700, whatever the umask)."""
    if storage_options:
        raise TypeError(
            f"local storage takes only the storage option 'private'; got {sorted(storage_options)}"
        )
    if not isinstance(private, bool):
        raise TypeError(f"the storage option 'private' is true or false, not {private!r}")
    path = location.split("://", 1)[1] if "://" in location else location
    return LocalBackend(path, private=private)
