"""Two writers of one catalogue record at once (issue 15, item 2): flow runs of identical parameters record the
same evaluation together; on PostgreSQL both saw no row, the second insert conflicted and failed its flow run
(UniqueViolation on ix_evaluations_digest under 20 runs at once). The second writer now gets the first one's
row and its own transaction stays usable. On the local stack's PostgreSQL."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def test_a_second_writer_of_one_digest_gets_the_first_ones_row(stack_api):
    from registry.catalogue.db import open_session
    from registry.catalogue.models import Dataset
    from registry.catalogue.records import record_dataset, record_weights

    factory = open_session(stack_api["GROUPDIFF_CATALOGUE_URL"])
    digest, uri, seen = f"race-{uuid.uuid4().hex[:12]}", "builtin://race", {}

    def second_writer() -> None:
        try:
            with factory.begin() as session:
                row = record_dataset(session, "race", digest, uri)  # sees no row; its insert waits for the first
                seen["id"] = row.id
                record_weights(session, "race", f"{digest}-w", "s3://b/w")  # the transaction is still usable
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            seen["error"] = repr(exc)

    with factory() as first:
        mine = record_dataset(first, "race", digest, uri)  # inserted, not committed yet
        writer = threading.Thread(target=second_writer)
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive()  # blocked on the first one's uncommitted row
        first.commit()
        writer.join(30)
        assert seen == {"id": mine.id}, seen
    with factory() as session:
        assert session.query(Dataset).filter_by(digest=digest).count() == 1
