"""``collectors/confined.open_parent_beneath`` on real directories and symlinks: the quick way (the path as
written, no symlink on it) and the realpath way give the same answers."""

from __future__ import annotations

import os

import pytest

from agent.collectors.confined import open_parent_beneath


def opened(path, root) -> str | None:
    fd = open_parent_beneath(path, root)
    if fd is None:
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "inside-link").symlink_to(root / "a")
    (root / "out-link").symlink_to(tmp_path / "outside")
    (tmp_path / "root-link").symlink_to(root)
    return tmp_path, root


def test_a_path_as_written_under_the_root_opens_its_directory(tree):
    _tmp, root = tree
    assert opened(root / "a" / "b" / "f", root) == str(root / "a" / "b")
    assert opened(root / "f", root) == str(root)
    assert opened(f"{root}/a/./b/../b/f", root) == str(root / "a" / "b")


def test_a_symlink_inside_the_root_is_followed_only_to_where_it_stays_inside(tree):
    tmp, root = tree
    assert opened(root / "inside-link" / "f", root) == str(root / "a")
    assert opened(root / "out-link" / "f", root) is None
    assert opened(tmp / "outside" / "f", root) is None
    assert opened(f"{root}/../outside/f", root) is None


def test_a_root_given_through_a_symlink_is_its_real_directory(tree):
    tmp, root = tree
    assert opened(tmp / "root-link" / "a" / "f", tmp / "root-link") == str(root / "a")
    assert opened(root / "a" / "f", tmp / "root-link") == str(root / "a")


def test_a_missing_directory_is_the_callers_error_not_a_refusal(tree):
    _tmp, root = tree
    with pytest.raises(FileNotFoundError):
        open_parent_beneath(root / "nope" / "f", root)
    (root / "a" / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        open_parent_beneath(root / "a" / "file" / "f", root)
