"""Stop the S3 server in the middle of a multipart upload (the checkpoint's ``model.safetensors``, 12 MiB in
5 MiB parts, stopped as its 2nd part is sent): no partial object becomes visible, the retries are bounded
and logged, the flow fails naming the endpoint; once the server is back the re-run completes and reuses what
was complete (the finished training is published, not trained again)."""
from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from flows.records import Records
from registry.layout import checkpoint_prefix
from tests.faults.conftest import TINY, FlowInThread, artefact_problems
from tests.faults.proxy import TripProxy

pytestmark = pytest.mark.integration

# a 3.2M-parameter SiT block: model.safetensors is 12.3 MiB, three parts of 5 MiB (the smallest S3 allows)
PARAMS = {**TINY, "train_steps": 2,
          "overrides": [o.replace("hidden_size=32", "hidden_size=384") for o in TINY["overrides"]]}
PART_MIB = 5
SECOND_PART = rb"PUT \S*[?&]partNumber=2[& ]"
MAX_WAIT_S = 60  # request retries (3, backoff 0.2 s doubling) x task attempts (1 + 3, waits 2, 4, 8 s)


def _logs(api: str, flow_run_id: str) -> list[str]:
    logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    return [entry["message"] for entry in logs.json()]


class _Lines(logging.Handler):
    """Keeps the messages of one logger (attached to it: Prefect reconfigures the root logger's handlers)."""

    def __init__(self, name: str):
        super().__init__(logging.WARNING)
        self.logger, self.lines = logging.getLogger(name), []
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_s3_stopped_during_a_multipart_upload(fault_stack, monkeypatch):
    from infra.process import stop

    config = fault_stack.config
    proxy = TripProxy(config.s3_port, SECOND_PART,
                      lambda: stop("s3", config.state_dir.resolve(), config.stop_timeout_s))
    monkeypatch.setenv("GROUPDIFF_S3_ENDPOINT", proxy.url)
    monkeypatch.setenv("GROUPDIFF_STORE_PART_SIZE_MIB", str(PART_MIB))
    urllib3_log = _Lines("urllib3.connectionpool")
    t0 = time.monotonic()
    try:
        state = FlowInThread(PARAMS, fault_stack.records).result()
        assert proxy.tripped.is_set(), "no multipart upload reached its 2nd part"
        failed_after = time.monotonic() - proxy.trip_time
        print(f"flow failed {failed_after:.1f}s after the S3 server stopped ({time.monotonic() - t0:.1f}s in all)")
        assert state.is_failed(), state
        assert f"cannot reach the S3 endpoint {proxy.url} after 3 retries" in state.message, state.message
        assert failed_after < MAX_WAIT_S
        # logged: each request's retries by urllib3 (never more than max_retries), each task retry by Prefect
        totals = {int(m.group(1)) for line in urllib3_log.lines
                  if (m := re.match(r"Retrying \(Retry\(total=(\d+)", line))}
        assert totals == {2, 1, 0}, urllib3_log.lines[:10]  # 3 retries per request, counted down, then the error above
        messages = _logs(fault_stack.env["PREFECT_API_URL"], str(state.state_details.flow_run_id))
        task_retries = [m for m in messages if "ObjectStoreError" in m and " - Retry " in m]
        assert [re.search(r"Retry (\d/\d)", m).group(1) for m in task_retries] == ["1/3", "2/3", "3/3"], messages

        fault_stack.restart("s3")
        proxy.heal()
        rec = Records(fault_stack.records)
        run_dir = next(p for p in fault_stack.out.glob("work/train/baseline-*")
                       if '"hidden_size": 384' in (p / "launch_config.json").read_text())
        prefix = checkpoint_prefix(run_dir.name, PARAMS["train_steps"])
        # nothing half-uploaded is visible: not the interrupted object, no manifest, no temporary upload
        keys = rec.store.list(prefix)
        assert f"{prefix}/model.safetensors" not in keys and f"{prefix}/manifest.json" not in keys, keys
        assert not list(rec.store.client.list_objects(config.bucket, prefix=".partial/", recursive=True))
        for key in keys:  # what did arrive is whole: its size and sha256 as recorded
            rec.store.get_bytes(key)

        log_size = (run_dir / "train.log").stat().st_size
        t1 = time.monotonic()
        again = FlowInThread(PARAMS, fault_stack.records).result()
        print(f"re-run after the restart: {time.monotonic() - t1:.1f}s")
        assert again.is_completed(), again
        messages = _logs(fault_stack.env["PREFECT_API_URL"], str(again.state_details.flow_run_id))
        assert any("already finished" in m and "publishing it" in m for m in messages), messages
        assert (run_dir / "train.log").stat().st_size == log_size  # not trained again
        assert f"{prefix}/manifest.json" in rec.store.list(prefix)
        assert artefact_problems(fault_stack) == []
    finally:
        proxy.close()
        urllib3_log.logger.removeHandler(urllib3_log)
