"""Transfer settings of the object store from the environment (``$GROUPDIFF_STORE_<FIELD>``): what every store a
flow opens uses, so an operator sets retries, timeouts and the multipart part size without code."""
from __future__ import annotations

import pytest

from registry.config import ENV_STORE_FIELDS, ObjectStoreConfig
from registry.stores import open_store


def test_environment_sets_transfer_settings_of_opened_stores(monkeypatch, tmp_path):
    for name in ENV_STORE_FIELDS:
        monkeypatch.delenv(f"GROUPDIFF_STORE_{name.upper()}", raising=False)
    assert ObjectStoreConfig.from_env() == ObjectStoreConfig()
    monkeypatch.setenv("GROUPDIFF_STORE_MAX_RETRIES", "7")
    monkeypatch.setenv("GROUPDIFF_STORE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("GROUPDIFF_STORE_PART_SIZE_MIB", "5")
    monkeypatch.setenv("GROUPDIFF_STORE_PROGRESS_MIN_MIB", "0")
    config = ObjectStoreConfig.from_env()
    assert (config.max_retries, config.timeout_s, config.part_size_mib) == (7, 2.5, 5)
    assert open_store(f"file://{tmp_path}").progress_min_bytes == 0  # open_store without a config reads them


@pytest.mark.parametrize("name,value,expected", [("MAX_RETRIES", "lots", "valid integer"),
                                                 ("MAX_RETRIES", "99", "less than or equal to 20"),
                                                 ("PART_SIZE_MIB", "1", "greater than or equal to 5")])
def test_bad_environment_value_names_the_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(f"GROUPDIFF_STORE_{name}", value)
    with pytest.raises(ValueError, match=rf"\$GROUPDIFF_STORE_{name}='{value}': .*{expected}"):
        ObjectStoreConfig.from_env()
