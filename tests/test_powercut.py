"""Power cuts: the FUSE file system that models one (tests/fusefs), and `wbx serve` surviving one.

The file system keeps every write visible but, at a cut, keeps only what was made durable:
a file's bytes at its last fsync, a directory's entries at its last directory fsync.
"""

from __future__ import annotations

import errno
import os

import pytest

from fusefs import PowerCutMount


@pytest.fixture
def disk(tmp_path):
    with PowerCutMount(tmp_path) as m:
        yield m
    assert not os.path.ismount(m.mountpoint)


def _write(path, data: bytes, *, sync: bool, flags: int = os.O_CREAT | os.O_WRONLY | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_write_without_fsync_is_gone_after_a_cut(disk):
    root = disk.mountpoint
    _write(root / "kept", b"v1", sync=False)
    disk.sync()
    _write(root / "kept", b"v2 longer", sync=False)
    _write(root / "new", b"never synced", sync=False)
    assert (root / "kept").read_bytes() == b"v2 longer"  # readers see it before the cut
    disk.cut()
    assert (root / "kept").read_bytes() == b"v1"
    assert not (root / "new").exists()


def test_an_fsynced_new_file_needs_its_directory_synced_too(disk):
    root = disk.mountpoint
    (root / "d").mkdir()
    disk.sync()
    _write(root / "d" / "file-only", b"data", sync=True)
    assert sorted(os.listdir(root / "d")) == ["file-only"]
    disk.cut()
    assert sorted(os.listdir(root / "d")) == []
    _write(root / "d" / "both", b"data and name", sync=True)
    _sync_dir(root / "d")
    _write(root / "d" / "after", b"created after the dir sync", sync=True)
    disk.cut()
    assert sorted(os.listdir(root / "d")) == ["both"]
    assert (root / "d" / "both").read_bytes() == b"data and name"


def test_a_synced_name_without_synced_data_comes_back_empty(disk):
    root = disk.mountpoint
    _write(root / "empty", b"data never fsynced", sync=False)
    _sync_dir(root)
    disk.cut()
    assert (root / "empty").read_bytes() == b""


def test_appends_after_the_last_fsync_are_cut_off(disk):
    root = disk.mountpoint
    _write(root / "log", b"line 1\n", sync=True)
    _sync_dir(root)
    _write(root / "log", b"line 2\n", sync=True, flags=os.O_WRONLY | os.O_APPEND)
    _write(root / "log", b"line 3\n", sync=False, flags=os.O_WRONLY | os.O_APPEND)
    assert (root / "log").read_bytes() == b"line 1\nline 2\nline 3\n"
    disk.cut()
    assert (root / "log").read_bytes() == b"line 1\nline 2\n"


def test_a_rename_over_an_old_file_without_a_directory_fsync_brings_the_old_file_back(disk):
    root = disk.mountpoint
    _write(root / "page", b"old content", sync=True)
    _sync_dir(root)
    _write(root / "page.tmp", b"new content", sync=True)  # the new file's data is durable...
    os.rename(root / "page.tmp", root / "page")  # ...but not the rename
    assert (root / "page").read_bytes() == b"new content"
    disk.cut()
    assert (root / "page").read_bytes() == b"old content"
    assert not (root / "page.tmp").exists()
    # the same with the directory synced after the rename keeps the new file
    _write(root / "page.tmp", b"new content", sync=True)
    os.rename(root / "page.tmp", root / "page")
    _sync_dir(root)
    disk.cut()
    assert (root / "page").read_bytes() == b"new content"
    assert sorted(os.listdir(root)) == ["page"]


def test_an_unlink_without_a_directory_fsync_is_undone(disk):
    root = disk.mountpoint
    _write(root / "a", b"A", sync=True)
    _write(root / "b", b"B", sync=True)
    _sync_dir(root)
    os.unlink(root / "a")
    os.unlink(root / "b")
    _sync_dir(root)
    _write(root / "b", b"B again", sync=True)  # a new inode under the old name, name not synced
    disk.cut()
    assert sorted(os.listdir(root)) == []


def test_git_style_link_then_unlink_and_a_new_directory(disk):
    """Git writes an object to a temp file, links it to its final name and unlinks the temp."""
    root = disk.mountpoint
    (root / "objects").mkdir()
    _sync_dir(root)
    (root / "objects" / "ab").mkdir()  # a new fan-out dir: durable in objects/ only after its sync
    _write(root / "objects" / "ab" / "tmp_obj", b"blob", sync=True)
    os.link(root / "objects" / "ab" / "tmp_obj", root / "objects" / "ab" / "cdef")
    os.unlink(root / "objects" / "ab" / "tmp_obj")
    _sync_dir(root / "objects" / "ab")
    disk.cut()
    assert os.listdir(root / "objects") == []  # objects/ itself was never synced after the mkdir
    (root / "objects" / "ab").mkdir()
    _write(root / "objects" / "ab" / "tmp_obj", b"blob", sync=True)
    os.link(root / "objects" / "ab" / "tmp_obj", root / "objects" / "ab" / "cdef")
    os.unlink(root / "objects" / "ab" / "tmp_obj")
    _sync_dir(root / "objects" / "ab")
    _sync_dir(root / "objects")
    disk.cut()
    assert os.listdir(root / "objects" / "ab") == ["cdef"]
    assert (root / "objects" / "ab" / "cdef").read_bytes() == b"blob"


def test_a_full_disk_refuses_new_bytes_and_names_then_takes_them_again(disk):
    root = disk.mountpoint
    _write(root / "f", b"x" * 1000, sync=True)
    disk.full_after(4096)
    fd = os.open(root / "g", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, b"y" * 3000) == 3000
        assert os.write(fd, b"y" * 3000) == 1096  # a short write as the space runs out
        with pytest.raises(OSError) as e:
            os.write(fd, b"y")
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    sv = os.statvfs(root)
    assert sv.f_bavail * sv.f_frsize == 0
    with pytest.raises(OSError) as e:
        (root / "h").write_bytes(b"")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:
        (root / "dir").mkdir()
    assert e.value.errno == errno.ENOSPC
    # overwriting in place needs no new space; reads go on
    fd = os.open(root / "f", os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"z" * 10, 0) == 10
    finally:
        os.close(fd)
    assert (root / "f").read_bytes() == b"z" * 10 + b"x" * 990
    assert disk.stats()["enospc"] >= 3
    disk.space_back()
    (root / "h").write_bytes(b"room again")
    assert (root / "h").read_bytes() == b"room again"
    assert os.statvfs(root).f_bavail > 0
