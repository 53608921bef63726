"""The checkpoint writer's fault-injection hook (``$GROUPDIFF_CHECKPOINT_HOLD``): off by default, waits exactly
at the named point while its marker exists, and refuses a malformed value. The fault suite (``tests/faults``)
kills trainings held there."""
from __future__ import annotations

import threading
import time

import pytest

from groupdiff.train.checkpoint import HOLD_ENV, hold_if_asked


def test_unset_or_another_point_returns_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv(HOLD_ENV, raising=False)
    hold_if_asked("partial", 20, tmp_path)
    monkeypatch.setenv(HOLD_ENV, "partial:20")
    hold_if_asked("partial", 10, tmp_path)
    hold_if_asked("done", 20, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_holds_while_the_marker_exists(monkeypatch, tmp_path):
    monkeypatch.setenv(HOLD_ENV, "done:40")
    thread = threading.Thread(target=hold_if_asked, args=("done", 40, tmp_path), daemon=True)
    thread.start()
    marker = tmp_path / ".hold-done-00000040"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert thread.is_alive()
    marker.unlink()
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("value", ["middle:20", "partial", "partial:x"])
def test_malformed_value_is_an_error_naming_it(monkeypatch, tmp_path, value):
    monkeypatch.setenv(HOLD_ENV, value)
    with pytest.raises(ValueError, match=f"GROUPDIFF_CHECKPOINT_HOLD='{value}'.*start.*partial.*done"):
        hold_if_asked("partial", 20, tmp_path)
