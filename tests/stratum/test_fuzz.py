"""Hypothesis: whatever a client sends, the session answers every request exactly once with its id
and never raises (a bad client can only hurt its own connection)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.work.builders import ADDRESS, rig

METHODS = [
    "mining.subscribe",
    "mining.authorize",
    "mining.configure",
    "mining.suggest_difficulty",
    "mining.suggest_target",
    "mining.extranonce.subscribe",
    "mining.submit",
    "mining.ping",
    "mining.get_transactions",
    "nonsense",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["ffffffff", "00002000", ADDRESS, "1", "00" * 8, "1e308", "-1", "d=5"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "version-rolling.mask",
                    "version-rolling.min-bit-count",
                    "minimum-difficulty.value",
                    "x",
                ]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
requests = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(min_value=0, max_value=10**6), st.text(max_size=8)),
        "method": st.sampled_from(METHODS),
        "params": st.one_of(st.lists(values, max_size=7), values),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=12, unique_by=lambda r: str(r["id"])))
def test_every_request_is_answered_once_and_nothing_raises(msgs: list[dict[str, Any]]) -> None:
    r = rig(start=1e-3, min_difficulty=1e-9)
    s = r.session()
    # a well-formed start, so later submits reach the share path too
    s.feed(
        [
            b'{"id":"s","method":"mining.subscribe","params":["f"]}',
            b'{"id":"a","method":"mining.authorize","params":["%s","x"]}' % ADDRESS.encode(),
        ],
        r.clock.now,
    )
    out = s.feed([json.dumps(m).encode() for m in msgs], r.clock.now)
    replies = [json.loads(x) for x in out.splitlines()]
    answered = [m["id"] for m in replies if "method" not in m]
    assert sorted(map(str, answered)) == sorted(str(m["id"]) for m in msgs)
    for m in replies:
        if "method" not in m and m["error"] is not None:
            code, reason, data = m["error"]
            assert isinstance(code, int) and isinstance(reason, str) and data is None
