"""Folders another local user cannot redirect: checked ownership, no symlink followed.

A run writes by path (events.jsonl, checkpoints/, control/) for days. That is safe only if
no other user can rename, replace or plant anything on the way to the run directory, so
the folders mpt makes run directories in are checked once, before anything is written
(`unsafe_folder`), and the folders mpt makes inside a run directory are made without
following a symbolic link (`make_dir`). Root is trusted (it can do anything anyway).
torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from pathlib import Path

NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DIR_MODE = 0o755  # run folders: the user writes, others may read (the umask never widens it)


def user_name(uid: int) -> str:
    """`user 'nobody' (uid 65534)`, or `uid 1234` for a uid with no name."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def trusted_owner(uid: int) -> bool:
    """Files of this user (or root's) are ours to use."""
    return uid in (os.geteuid(), 0)


def _private_group(gid: int) -> bool:
    """The user's own group (user private groups, umask 002): nobody else is in it."""
    try:
        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == me.pw_gid and group.gr_name == me.pw_name and set(group.gr_mem) <= {me.pw_name}


def writable_by_others(st: os.stat_result) -> bool:
    """Whether a user other than its owner (and root) can add, rename or remove entries."""
    return bool(st.st_mode & stat.S_IWOTH) or bool(
        st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid)
    )


def _shown(path: Path) -> str:
    """A path as the user would write it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(os.getcwd()))
    except ValueError:
        return str(path)


def _mode(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}"


def _folder_problem(path: Path, folder: os.stat_result) -> str | None:
    """What is unsafe about making or keeping entries in the folder `path` (stat `folder`)."""
    if writable_by_others(folder) and not folder.st_mode & stat.S_ISVTX:
        return (
            f"{_shown(path)} is writable by other users ({_mode(folder)}, no sticky bit), "
            "so they could rename or replace the folders in it; remove their write "
            "permission (chmod go-w) or choose another run.out_dir"
        )
    return None


def _entry_problem(path: Path, st: os.stat_result, folder: os.stat_result) -> str | None:
    """What is unsafe about `path` (lstat `st`) in a folder (stat `folder`), or None."""
    if writable_by_others(folder) and not trusted_owner(st.st_uid):
        # A folder every user can write (like /tmp): its sticky bit protects only the
        # entries of their own owner, so an entry made by another user is theirs to swap.
        return (
            f"{_shown(path)} is owned by {user_name(st.st_uid)}; mpt makes run folders only "
            "in folders you own; choose another run.out_dir or run.name"
        )
    return None


def _chain_problem(path: Path) -> str | None:
    """What on the way to `path` (absolute) lets another user swap a folder, or None."""
    folder = os.stat("/")
    walked = Path("/")
    for part in path.parts[1:]:
        walked /= part
        problem = _folder_problem(walked.parent, folder)
        if problem:
            return problem
        try:
            st = os.lstat(walked)
        except FileNotFoundError:
            return None  # made later by mpt itself, as the user's, in a folder checked safe
        problem = _entry_problem(walked, st, folder)
        if problem is None and stat.S_ISLNK(st.st_mode):
            problem = _chain_problem(Path(os.path.realpath(walked)))
        if problem:
            return problem
        try:
            folder = os.stat(walked)
        except OSError:
            return None  # a dangling link or a file in the way: mkdir reports it
    return None


def unsafe_folder(path: Path) -> str | None:
    """Why another user could redirect what is written under the folder `path`, or None.

    Every folder on the way (symbolic links followed, each link's own folder checked
    too) must either be writable by its owner alone, or carry the sticky bit (like /tmp)
    with the next entry owned by the user or root. The folder itself, where it exists,
    must be owned by the user (or root) and writable by no other user. Parts of the path
    that do not exist yet are fine: mpt makes them, as the user's.
    """
    path = Path(os.path.abspath(path))
    problem = _chain_problem(path)
    if problem:
        return problem
    try:
        folder = os.stat(path)
    except OSError:
        return None  # not made yet, or mkdir's own error names what is in the way
    if not stat.S_ISDIR(folder.st_mode):
        return None
    if not trusted_owner(folder.st_uid):
        return (
            f"{_shown(path)} is owned by {user_name(folder.st_uid)}; mpt makes run folders only "
            "in folders you own; choose another run.out_dir or run.name"
        )
    if writable_by_others(folder):
        return (
            f"{_shown(path)} is writable by other users ({_mode(folder)}), so they could rename "
            "or replace the run folders in it; remove their write permission (chmod go-w) "
            "or choose another run.out_dir or run.name"
        )
    return None


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """`mkdir -p` whose every new folder gets `mode` (never the umask's whim: with umask 0,
    mkdir -p would make folders every user can write)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        # One made meanwhile (another run of the same name) is checked afterwards.
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, mode)


def make_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Make the folder `path`, or accept one already there that is a real folder (not a
    symbolic link) owned by the user or root; otherwise OSError, saying what is there."""
    try:
        os.mkdir(path, mode)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{path.name} is a symbolic link, not a folder mpt made")
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path.name} is not a folder")
    if not trusted_owner(st.st_uid):
        raise OSError(errno.EPERM, f"{path.name} is owned by {user_name(st.st_uid)}")


def open_dir(path: Path, dir_fd: int | None = None) -> int:
    """A file descriptor of the folder `path`, never through a symbolic link at its end."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW, dir_fd=dir_fd)
