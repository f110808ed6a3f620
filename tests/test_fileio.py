"""fileio.write_atomic: concurrent writers of one path never collide; a failed write leaves the
old file and no temporary."""

import threading

import pytest

from jaxselfeval.fileio import write_atomic


def test_concurrent_writers_of_one_path_never_collide(tmp_path):
    """Eight threads write one path 20 times each (1 MB texts): no writer fails, the file is
    always one writer's whole text, and no temporary is left behind. (With a fixed '.tmp' name
    the writers shared one temporary: a rename raised FileNotFoundError or a file mixed texts.)"""
    path = tmp_path / "out.json"
    texts = [chr(ord("a") + i) * 1_000_000 for i in range(8)]
    errors, seen = [], []

    def writer(text):
        try:
            for _ in range(20):
                write_atomic(path, text)
                seen.append(path.read_text())
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(s in texts for s in seen) and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 123)  # neither text nor bytes: fails inside the write
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_atomic(path, b"\x00bytes")  # bytes are written as they are
    assert path.read_bytes() == b"\x00bytes"
