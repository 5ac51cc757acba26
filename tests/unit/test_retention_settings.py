"""The retention settings of sagad: off by default, validated like every other setting."""

from __future__ import annotations

import pytest

from saga_core.settings import SettingsError, load_settings


def test_retention_is_off_by_default_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGA_CONFIG", "SAGA_RETENTION_DAYS", "SAGA_RETENTION_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.retention_days, s.retention_interval, s.retention_batch_size) == (None, 3600.0, 500)
    assert load_settings(retention_days=0.5).retention_days == 0.5
    monkeypatch.setenv("SAGA_RETENTION_DAYS", "30")
    assert load_settings().retention_days == 30
    with pytest.raises(SettingsError) as err:
        load_settings(retention_days=0, retention_interval=-1, retention_batch_size=0)
    fields = sorted(p.split(":")[0] for p in err.value.problems)
    assert fields == ["retention_batch_size", "retention_days", "retention_interval"]
