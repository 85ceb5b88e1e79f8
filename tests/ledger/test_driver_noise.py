"""asyncpg's reconnect noise during an outage: one WARNING a minute with its reason, no
traceback (the pool logs one per failed reconnect otherwise)."""

from __future__ import annotations

import logging

import pytest

from poold.ledger import postgres


def test_reconnect_noise_is_one_warning_a_minute(caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    noise = postgres._DRIVER_NOISE  # as installed by every PostgresStore
    monkeypatch.setattr(noise, "_last", -math.inf)
    monkeypatch.setattr(noise, "_held", 0)
    postgres.quiet_driver_logs()
    pool_log = logging.getLogger("asyncpg.pool")
    with caplog.at_level(logging.WARNING, "asyncpg.pool"):
        for _ in range(20):
            try:
                raise ConnectionRefusedError(111, "Connect call failed")
            except ConnectionRefusedError:
                pool_log.warning("Failed to restore the pool connection floor; retrying",
                                 exc_info=True)
        pool_log.info("not a warning: passes untouched")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None and warnings[0].exc_text is None
    msg = warnings[0].getMessage()
    assert "ConnectionRefusedError" in msg and "pool connection floor" in msg, msg
    assert noise._held == 19
