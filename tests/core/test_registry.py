import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ls_backend.core.registry import Registry


def write_marker(text: str):
    def write(path: Path) -> None:
        (path / "model.txt").write_text(text)

    return write


def test_versions_are_numbered_and_current_moves_only_when_set(tmp_path):
    registry = Registry(tmp_path)
    first = registry.save("head", write_marker("a"), {"promoted": True})
    second = registry.save("lora", write_marker("b"), {"promoted": False})
    assert (first, second) == ("v0001-head", "v0002-lora")
    assert registry.current() is None
    registry.set_current(first)
    assert registry.current() == first
    assert registry.info(second)["kind"] == "lora"
    assert (registry.path(second) / "model.txt").read_text() == "b"


def test_rollback_goes_to_the_previous_promoted_version(tmp_path):
    registry = Registry(tmp_path)
    a = registry.save("head", write_marker("a"), {"promoted": True})
    registry.save("head", write_marker("b"), {"promoted": False})
    c = registry.save("head", write_marker("c"), {"promoted": True})
    registry.set_current(c)
    assert registry.rollback() == a
    assert registry.current() == a
    with pytest.raises(KeyError):
        registry.rollback()
    assert registry.rollback(c) == c


def test_a_failed_write_leaves_no_version(tmp_path):
    registry = Registry(tmp_path)

    def broken(path: Path) -> None:
        (path / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        registry.save("head", broken, {})
    assert registry.versions() == []
    assert list(tmp_path.glob(".tmp-*")) == []


def test_kill_during_save_keeps_the_last_good_version_serving(tmp_path):
    registry = Registry(tmp_path)
    good = registry.save("head", write_marker("good"), {"promoted": True})
    registry.set_current(good)
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from ls_backend.core.registry import Registry
        def slow(path):
            (path / "model.txt").write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
        Registry(Path({str(tmp_path)!r})).save("head", slow, {{"promoted": True}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    restarted = Registry(tmp_path)
    assert restarted.current() == good
    assert restarted.versions() == [good]
    restarted.clean()
    assert list(tmp_path.glob(".tmp-*")) == []
    assert restarted.save("head", write_marker("next"), {}) == "v0002-head"


def test_the_pointer_names_only_a_complete_version(tmp_path):
    registry = Registry(tmp_path)
    a = registry.save("head", write_marker("a"), {})
    with pytest.raises(KeyError):
        registry.set_current("v0002-head")  # not saved (yet)
    registry.pointer.write("v0002-head")  # a pointer ahead of the files it names
    assert registry.current() is None
    registry.set_current(a)
    assert registry.current() == a and registry.moves == 1


def test_a_rollback_pins_and_the_pin_survives_reopening(tmp_path):
    registry = Registry(tmp_path)
    a = registry.save("head", write_marker("a"), {"promoted": True})
    b = registry.save("head", write_marker("b"), {"promoted": True})
    registry.set_current(b)
    assert registry.pinned() is None
    assert registry.rollback() == a and registry.pinned() == a
    assert Registry(tmp_path).pinned() == a  # the file pointer keeps the pin
    assert registry.unpin() == a and Registry(tmp_path).pinned() is None
    assert registry.current() == a
    registry.rollback(b, pin=False)
    assert registry.current() == b and registry.pinned() is None


def test_prune_keeps_the_serving_the_newest_and_every_promoted_version(tmp_path):
    """A version per label grew without bound (0.9 GB at 5,000 labels): a round prunes what
    neither serves, nor is among the newest, nor was ever promoted; the curve keeps its figures."""
    registry = Registry(tmp_path)
    names = [
        registry.save("head", write_marker(str(i)), {"promoted": i in (1, 4), "labels": i})
        for i in range(1, 11)
    ]
    with registry.lock():
        registry.set_current(names[2], pin=True)  # a rollback to a version never promoted
        gone = registry.prune(keep_last=3)
    kept = {names[0], names[2], names[3], *names[-3:]}  # promoted, serving, the newest 3
    assert registry.versions() == sorted(kept)
    assert sorted(gone) == sorted(set(names) - kept)
    assert [r["version"] for r in registry.history()] == names  # every version's record
    assert [r["labels"] for r in registry.history()] == list(range(1, 11))
    assert registry.prune(keep_last=3) == []  # nothing more to delete
    assert registry.save("head", write_marker("x"), {}) == "v0011-head"  # numbering goes on
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError):
        registry.prune(keep_last=0)
