"""Private files: everything whodid writes is for its owner's eyes only.

The store, the agent's spool, alert files, trace pages and pictures hold who ran what (command
lines carry secrets however well they are redacted); keys sign links and buttons. So:

- every file whodid creates is 0600 and every directory 0700, whatever the umask. The mode is
  set on the new file descriptor (fchmod), never by changing the umask: the umask is
  process-wide, and serve and the agent run threads that create files too;
- a file whodid writes whole (a page, an alert, a key) is written to a new private file beside
  it and renamed over the name, so a reader never sees half of it, a full disk leaves the old
  file as it was, and a name planted in a shared directory (a symlink in /tmp) is replaced,
  not followed;
- files and directories that already exist keep the mode their owner gave them - a store
  another group is meant to read stays readable - except what whodid rewrites whole;
- a secret whodid reads (the agent's token) is refused if group or others may read or write
  it, as ssh refuses such a private key.

The errors people meet here ("disk full", "read-only") are worded once, in `trouble`, and the
store says the same words about its own files.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

FILE_MODE = 0o600
DIR_MODE = 0o700


class PrivateFileError(Exception):
    """A file whodid would write or read cannot be, explained for a person."""


def make_dirs(path: str | os.PathLike) -> None:
    """Make the directory and any missing parents, each 0700; existing ones are left alone.
    (os.makedirs gives the parents it makes the umask's mode, and the last one mode & ~umask.)"""
    path = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", directory) from None
            continue                       # made by someone else meanwhile: theirs to keep
        os.chmod(directory, DIR_MODE)


def create_file(path: str | os.PathLike) -> bool:
    """Create an empty private file if there is none (for SQLite to open, which then gives its
    -wal and -shm files the same mode). True if this call created it."""
    path = os.fspath(path)
    make_dirs(os.path.dirname(os.path.abspath(path)))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def write_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a whole file, private: a new 0600 file beside it, renamed over the name. A name
    that is not a regular file (a terminal, /dev/stdout, a pipe) is written through instead."""
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(path, "wb") as fh:
            fh.write(raw)
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_append(path: str | os.PathLike):
    """A binary file to append to, created private if it is not there."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    return os.fdopen(fd, "ab")


def check_secret(path: str | os.PathLike, what: str) -> None:
    """Refuse a secret file that group or others may read or write (ssh's rule for keys)."""
    path = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise PrivateFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise PrivateFileError(f"{what} {path} is open to group or others (mode {mode:04o}), and a secret "
                               f"others can read is theirs to use: run `chmod 600 {path}`")


def trouble(exc: OSError | None, path: str | os.PathLike) -> str | None:
    """"disk full" or "read-only" when that is why path could not be written, else None.
    Asks the filesystem itself as well as the error: SQLite reports a full disk or a read-only
    mount in words of its own ("disk I/O error", "unable to open database file")."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if code == errno.EROFS:
        return "read-only"
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    try:
        fs = os.statvfs(directory)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return "read-only"
    if fs.f_bavail == 0 or (fs.f_favail == 0 and fs.f_files):
        return "disk full"
    return None


def why_not_written(exc: OSError, path: str | os.PathLike, what: str) -> str:
    """One line for a person: what could not be written, why, and what to do."""
    path = os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return (f"cannot write {what} {path}: there is no directory {os.path.dirname(os.path.abspath(path))}; "
                "make it first, or choose another place")
    why = trouble(exc, path)
    if why == "disk full":
        return f"disk full: cannot write {what} {path}; free some space there, or choose another place"
    if why == "read-only":
        return f"read-only: cannot write {what} {path}: its filesystem is mounted read-only; choose another place"
    return f"cannot write {what} {path}: {exc.strerror or exc}"
