"""Training progress on the console: the flow follows the run's metrics.jsonl and prints one line per record."""
from __future__ import annotations

import json

from flows.training import ProgressTail


def _record(step: int, loss: float, images_per_s: float = 640.0) -> bytes:
    return (json.dumps({"kind": "metrics", "step": step, "metrics": {"loss": loss, "images_per_s": images_per_s}})
            + "\n").encode()


def test_each_complete_record_becomes_one_line_and_partial_lines_wait(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines: list[str] = []
    tail = ProgressTail(path, "groupdiff-l", total_steps=200, batch_images=64, echo=lines.append)
    tail.poll()  # no file yet: nothing, no error
    assert lines == []
    path.write_bytes(json.dumps({"kind": "params", "params": {"a": 1}}).encode() + b"\n" + _record(10, 0.51234))
    tail.poll()
    assert len(lines) == 1
    assert lines[0].startswith("[train groupdiff-l] step 10/200 (5%) loss 0.5123 | 640 img/s 10.0 it/s")
    with open(path, "ab") as f:  # a record half-written by the trainer is not read until its newline
        full = _record(20, 0.4)
        f.write(full[:15])
    tail.poll()
    assert len(lines) == 1
    with open(path, "ab") as f:
        f.write(full[15:])
    tail.poll()
    assert len(lines) == 2 and "step 20/200 (10%) loss 0.4000" in lines[1] and "ETA " in lines[1]
    tail.poll()
    assert len(lines) == 2  # nothing printed twice


def test_eta_follows_the_measured_rate(tmp_path, monkeypatch):
    clock = {"now": 100.0}
    monkeypatch.setattr("flows.training.time.monotonic", lambda: clock["now"])
    tail = ProgressTail(tmp_path / "m.jsonl", "baseline", total_steps=1000, batch_images=64, echo=lambda _: None)
    tail.line(100, {"loss": 1.0, "images_per_s": 64.0})
    clock["now"] += 50.0  # 400 more steps in 50 s: 8 it/s, 500 steps left -> 62.5 s
    line = tail.line(500, {"loss": 0.5, "images_per_s": 512.0})
    assert "8.0 it/s" in line and line.endswith("ETA 1m02s")
