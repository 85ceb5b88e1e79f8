"""One Stratum V1 connection as a state machine: lines in, reply bytes out (no sockets).

States: CONNECTED -> (subscribe) SUBSCRIBED, (authorize) AUTHORIZED flag, both -> WORKING (jobs
flow). Firmware sends subscribe / configure / authorize / suggest_difficulty in any order
(docs/STRATUM.md §2), so every request is accepted in any state and answered exactly once,
with its id echoed verbatim; work starts as soon as the session is both subscribed and authorized.
Unknown methods get error 20 and the session goes on.

Error tiers: reply-level errors are `[code, reason, null]`; session-level problems
(too many invalid shares in a row, a line too long) set `close_reason`, which the server acts on
after writing the replies of the current read. The invalid-share ladder: after half of
`invalid_limit` consecutive rejected shares with none accepted since, a `client.show_message`
warning; at `invalid_limit`, disconnect (stale shares don't count: they are honest latency,
unless their hash does not meet the share target either: `stale_low_difficulty` counts).

The server subclasses `Session` to add its transport (one object per connection keeps idle
connections small); everything here is testable by feeding bytes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from poold.bitcoin.target import DIFF1_TARGET
from poold.config import default
from poold.stratum import codec, messages
from poold.stratum.auth import Authorizer, Identity, StratumAuthError
from poold.stratum.messages import MalformedParams
from poold.work.difficulty import sane_difficulty
from poold.work.engine import SessionWork, ShareEngine
from poold.work.extranonce import ExtranonceAllocator, ExtranonceExhausted
from poold.work.shares import RejectReason

log = logging.getLogger(__name__)

BIP320_MASK = 0x1FFFE000
SAMPLE_EVERY = 256  # one share check in this many is timed
_REASONS = tuple(RejectReason)
# Error-reply tails indexed by RejectReason.index (no enum hashing per share).
REJECT_TAILS = tuple(codec.error_tail(r.code, r.message) for r in _REASONS)
_TRUE = codec.RESULT_TRUE_TAIL
_PARSE_ERROR = codec.error_line(None, 20, "Parse error: not a JSON object")
_loads = codec.raw_loads
_DECODE_ERRORS = codec.DECODE_ERRORS


class State(enum.IntEnum):
    CONNECTED = 0
    SUBSCRIBED = 1


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The per-connection knobs (from `[stratum]`)."""

    version_mask: int = default("stratum.version_mask")
    accept_unnegotiated_version_bits: bool = default("stratum.accept_unnegotiated_version_bits")
    extranonce2_size: int = default("stratum.extranonce2_size")
    # consecutive invalid shares before disconnect; 0 = never
    invalid_limit: int = default("stratum.invalid_share_limit")
    max_workers: int = 16  # authorized usernames per connection


class ShareCounters:
    """Plain-int counters the server flushes into Prometheus once a second (no locks per share).

    `rejected` is indexed by `RejectReason.index`; `by_reason()` gives the readable view."""

    __slots__ = ("accepted", "check_samples", "countdown", "rejected")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = [0] * len(_REASONS)
        self.countdown = SAMPLE_EVERY
        self.check_samples: list[float] = []  # seconds, drained into the histogram

    def by_reason(self) -> dict[RejectReason, int]:
        return dict(zip(_REASONS, self.rejected, strict=True))


class SessionContext:
    """What every session of one server shares."""

    __slots__ = ("allocator", "authorizer", "clock", "counters", "engine", "groups", "settings")

    def __init__(
        self,
        engine: ShareEngine,
        allocator: ExtranonceAllocator,
        authorizer: Authorizer,
        settings: SessionSettings,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.allocator = allocator
        self.authorizer = authorizer
        self.settings = settings
        self.clock = clock
        self.counters = ShareCounters()
        # payout group -> its working sessions (a dict as an ordered set)
        self.groups: dict[bytes, dict[Session, None]] = {}


class Session:
    """The protocol state of one miner connection."""

    __slots__ = ("accepted", "accepted_difficulty", "account", "authorized", "close_reason",
                 "connected_at", "ctx", "extra_workers", "extranonce_subscribed", "floor_md",
                 "floor_min", "identity", "invalid_streak", "last_activity", "last_share",
                 "miner_mask", "negotiated_mask", "state", "suggested", "user_agent", "warned",
                 "work", "worker")

    def __init__(self, ctx: SessionContext, now: float) -> None:
        self.ctx = ctx
        self.state = State.CONNECTED
        self.authorized = False
        self.work: SessionWork | None = None
        self.identity: Identity | None = None
        self.worker = ""
        self.account = ""
        self.extra_workers: dict[str, str] | None = None
        self.user_agent = ""
        self.negotiated_mask: int | None = None
        self.miner_mask = 0  # what the miner asked for in mining.configure (kept for re-masking)
        self.extranonce_subscribed = False
        self.suggested: float | None = None
        self.floor_min: float | None = None  # BIP310 minimum-difficulty
        self.floor_md: float | None = None  # password md=
        self.invalid_streak = 0
        self.warned = False
        self.connected_at = now
        self.last_activity = now
        self.close_reason: str | None = None
        self.accepted = 0
        self.accepted_difficulty = 0.0  # sum over accepted shares: the pool-verified hashrate
        self.last_share = 0.0  # time of the last accepted share

    def __repr__(self) -> str:
        en1 = self.work.en1.hex() if self.work else "-"
        return f"Session(en1={en1}, worker={self.worker!r}, ua={self.user_agent!r})"

    @property
    def working(self) -> bool:
        return self.authorized and self.work is not None and self.work.group_key is not None

    def effective_mask(self) -> int:
        if self.negotiated_mask is not None:
            return self.negotiated_mask
        s = self.ctx.settings
        return s.version_mask if s.accept_unnegotiated_version_bits else 0

    # --- input -------------------------------------------------------------------------------

    def feed(self, lines: list[bytes], now: float) -> bytes:
        """Handle complete lines; the bytes to write back (replies, then any pushed work)."""
        if len(lines) == 1:
            return self.handle_line(lines[0], now)
        return b"".join([self.handle_line(line, now) for line in lines])

    def handle_line(self, line: bytes, now: float) -> bytes:
        """One line in, its reply (and anything pushed after it) out; b"" for blank lines and
        for replies from the client to our own requests."""
        if not line or line.isspace():
            return b""
        try:
            msg = _loads(line)
        except _DECODE_ERRORS:
            return self._bad_line()
        if type(msg) is not dict:
            return self._bad_line()
        method = msg.get("method")
        msg_id = msg.get("id")
        if type(msg_id) is float:
            msg_id = codec.exact_id(line, msg_id)
        handler = _DISPATCH.get(method) if type(method) is str else None
        if handler is None:
            if method is None and ("result" in msg or "error" in msg):
                return b""  # a reply to something we sent (e.g. client.get_version): no answer
            return codec.error_line(msg_id, 20, f"Unknown method {str(method)[:64]!r}")
        try:
            return handler(self, msg_id, msg.get("params"), now)
        except MalformedParams as exc:
            return codec.error_line(msg_id, 20, f"Malformed params: {exc}")
        except Exception:
            # A bug must not break "one reply per id" nor reach the other sessions.
            log.exception("internal error handling %s from %r", method, self)
            return codec.error_line(msg_id, 20, "Internal error")

    def _bad_line(self) -> bytes:
        out = [_PARSE_ERROR]
        self._invalid(out)
        return b"".join(out)

    def _invalid(self, out: list[bytes]) -> None:
        limit = self.ctx.settings.invalid_limit
        if limit <= 0:
            return
        self.invalid_streak += 1
        if not self.warned and self.invalid_streak >= limit // 2:
            self.warned = True
            out.append(messages.show_message(
                f"poold: {self.invalid_streak} invalid shares in a row; check the miner"))
        if self.invalid_streak >= limit:
            self.close_reason = f"{self.invalid_streak} consecutive invalid shares"

    # --- handlers (one per method; registered in _DISPATCH) ----------------------------------

    def on_submit(self, msg_id: Any, params: Any, now: float) -> bytes:
        sw = self.work
        ctx = self.ctx
        if sw is None:
            reason: RejectReason | None = RejectReason.not_subscribed
        elif not self.authorized:
            reason = RejectReason.unauthorized
        else:
            self.last_activity = now
            try:
                s = messages.Submit.from_params(params)
            except MalformedParams:
                reason = RejectReason.malformed
            else:
                worker = s.worker
                if worker == self.worker:
                    account = self.account
                elif self.extra_workers is not None and worker in self.extra_workers:
                    account = self.extra_workers[worker]
                else:
                    account = ""
                if not account:
                    reason = RejectReason.unauthorized
                else:
                    counters = ctx.counters
                    counters.countdown -= 1
                    if counters.countdown:
                        reason = ctx.engine.submit(
                            sw, worker, account, s.job_id, s.extranonce2, s.ntime, s.nonce,
                            s.version_bits, now,
                        )
                    else:  # one submit in SAMPLE_EVERY is timed for poold_share_check_seconds
                        counters.countdown = SAMPLE_EVERY
                        t0 = perf_counter()
                        reason = ctx.engine.submit(
                            sw, worker, account, s.job_id, s.extranonce2, s.ntime, s.nonce,
                            s.version_bits, now,
                        )
                        counters.check_samples.append(perf_counter() - t0)
        id_bytes = str(msg_id).encode() if type(msg_id) is int else codec.encode_id(msg_id)
        if reason is None:
            assert sw is not None
            ctx.counters.accepted += 1
            self.invalid_streak = 0
            self.accepted += 1
            self.accepted_difficulty += sw.last_difficulty
            self.last_share = now
            reply = b'{"id":' + id_bytes + _TRUE
            if ctx.engine.vardiff is not None and ctx.engine.maybe_retarget(sw, now):
                return reply + self.next_work(now)
            return reply
        index = reason.index
        ctx.counters.rejected[index] += 1
        reply = b'{"id":' + id_bytes + REJECT_TAILS[index]
        if reason is RejectReason.stale or ctx.settings.invalid_limit <= 0:
            return reply
        out = [reply]
        self._invalid(out)
        return b"".join(out)

    def on_subscribe(self, msg_id: Any, params: Any, now: float) -> bytes:
        msg = messages.Subscribe.from_params(params)
        ctx = self.ctx
        self.user_agent = msg.user_agent
        if self.work is None:
            size = ctx.allocator.size
            resume = ExtranonceAllocator.parse_session_id(msg.session_id, size)
            try:
                en1 = ctx.allocator.allocate(now, resume)
            except ExtranonceExhausted:
                self.close_reason = "extranonce space exhausted"
                return codec.error_line(msg_id, 20, "Server full")
            self.work = SessionWork(en1, self.effective_mask(), now)
            self.state = State.SUBSCRIBED
        sid = self.work.en1.hex()
        result = [
            [["mining.set_difficulty", sid], ["mining.notify", sid]],
            sid,
            ctx.settings.extranonce2_size,
        ]
        return codec.result_line(msg_id, result) + self._maybe_start(now)

    def on_authorize(self, msg_id: Any, params: Any, now: float) -> bytes:
        msg = messages.Authorize.from_params(params)
        try:
            identity = self.ctx.authorizer.authorize(msg.username)
        except StratumAuthError as exc:
            return codec.error_line(msg_id, 24, str(exc))
        if self.identity is None:
            self.identity = identity
            self.worker = identity.worker
            self.account = identity.account
        elif identity.worker != self.worker:
            if identity.payout_script != self.identity.payout_script:
                return codec.error_line(msg_id, 24, "one payout address per connection")
            extra = self.extra_workers
            if extra is None:
                extra = self.extra_workers = {}
            if len(extra) >= self.ctx.settings.max_workers:
                return codec.error_line(msg_id, 24, "too many workers on this connection")
            extra[identity.worker] = identity.account
        d, md = msg.hints()
        if d is not None:
            self.suggested = d
        out = [codec.result_line(msg_id, True)]
        sw = self.work
        changed = False
        if md is not None:
            self.floor_md = md
            if sw is not None:
                changed = self.ctx.engine.set_floors(sw, None, md, now)
        if self.authorized and sw is not None and d is not None:
            changed = self.ctx.engine.request_difficulty(sw, d, now) or changed
        if changed and self.working:
            out.append(self.next_work(now))
        self.authorized = True
        self.last_activity = now
        out.append(self._maybe_start(now))
        return b"".join(out)

    def on_configure(self, msg_id: Any, params: Any, now: float) -> bytes:
        msg = messages.Configure.from_params(params)
        p = msg.params
        result: dict[str, Any] = {}
        follow = b""
        for ext in msg.extensions:
            if ext == "version-rolling":
                result.update(self._configure_version_rolling(p))
            elif ext == "minimum-difficulty":
                value = sane_difficulty(p.get("minimum-difficulty.value"))
                result["minimum-difficulty"] = value is not None
                if value is not None:
                    follow = self._set_minimum(value, now)
            elif ext == "subscribe-extranonce":
                self.extranonce_subscribed = True
                result["subscribe-extranonce"] = True
            elif ext == "info":
                result["info"] = True
            else:
                result[ext] = False
        return codec.result_line(msg_id, result) + follow

    def _configure_version_rolling(self, p: dict[str, Any]) -> dict[str, Any]:
        raw = p.get("version-rolling.mask", "ffffffff")
        try:
            miner_mask = int(raw, 16) if isinstance(raw, str) else int(raw)
        except (TypeError, ValueError, OverflowError):
            return {"version-rolling": "invalid version-rolling.mask"}
        miner_mask &= 0xFFFFFFFF
        self.miner_mask = miner_mask
        mask = self.ctx.settings.version_mask & miner_mask
        min_bits = p.get("version-rolling.min-bit-count", 0)
        if isinstance(min_bits, int) and bin(mask).count("1") < min_bits:
            self.negotiated_mask = None
            self._apply_mask()
            return {"version-rolling": False}
        self.negotiated_mask = mask
        self._apply_mask()
        return {"version-rolling": True, "version-rolling.mask": f"{mask:08x}"}

    def pool_mask_changed(self) -> bytes:
        """The pool's mask changed (SIGHUP): re-apply it; for a session that negotiated version
        rolling, the `mining.set_version_mask` to send (BIP310: valid immediately), else b""."""
        if self.negotiated_mask is None:
            self._apply_mask()  # unnegotiated sessions follow the pool mask directly
            return b""
        mask = self.ctx.settings.version_mask & self.miner_mask
        if mask == self.negotiated_mask:
            return b""
        self.negotiated_mask = mask
        self._apply_mask()
        return messages.set_version_mask(mask)

    def _apply_mask(self) -> None:
        if self.work is not None:
            self.work.mask = self.effective_mask()

    def _set_minimum(self, value: float, now: float) -> bytes:
        self.floor_min = value
        sw = self.work
        if sw is None:
            return b""
        if self.ctx.engine.set_floors(sw, value, None, now) and self.working:
            return self.next_work(now)
        return b""

    def on_suggest_difficulty(self, msg_id: Any, params: Any, now: float) -> bytes:
        msg = messages.SuggestDifficulty.from_params(params)
        return self._suggest(msg_id, msg.difficulty, now)

    def on_suggest_target(self, msg_id: Any, params: Any, now: float) -> bytes:
        msg = messages.SuggestTarget.from_params(params)
        return self._suggest(msg_id, DIFF1_TARGET / msg.target, now)

    def _suggest(self, msg_id: Any, difficulty: float, now: float) -> bytes:
        self.suggested = difficulty
        reply = codec.result_line(msg_id, True)
        sw = self.work
        if self.working and sw is not None and self.ctx.engine.request_difficulty(
            sw, difficulty, now
        ):
            return reply + self.next_work(now)
        return reply

    def on_extranonce_subscribe(self, msg_id: Any, params: Any, now: float) -> bytes:
        messages.ExtranonceSubscribe.from_params(params)
        self.extranonce_subscribed = True
        return codec.result_line(msg_id, True)

    def on_ping(self, msg_id: Any, params: Any, now: float) -> bytes:
        messages.Ping.from_params(params)
        return codec.result_line(msg_id, "pong")

    # --- work --------------------------------------------------------------------------------

    def _maybe_start(self, now: float) -> bytes:
        """Once subscribed and authorized: join the payout group and send the first job."""
        sw = self.work
        identity = self.identity
        if sw is None or identity is None or not self.authorized or sw.group_key is not None:
            return b""
        engine = self.ctx.engine
        engine.set_floors(sw, self.floor_min, self.floor_md, now)
        group = engine.book.group_key(identity.payout_script)
        engine.start(sw, group, self.suggested, now)
        members = self.ctx.groups.get(group)
        if members is None:
            members = self.ctx.groups[group] = {}
        members[self] = None
        if engine.book.template is None:
            return b""  # the first template's fan-out will reach this session
        return self.next_work(now)

    def next_work(self, now: float, clean: bool = False) -> bytes:
        """set_difficulty (if it changed) and the job this session should work on now."""
        sw = self.work
        if sw is None or sw.group_key is None or self.ctx.engine.book.template is None:
            return b""
        nxt = self.ctx.engine.next_job(sw, now)
        if nxt is None:
            return b""
        job, difficulty = nxt
        notify = job.notify_clean if clean else job.notify_plain
        if difficulty is None:
            return notify
        return messages.set_difficulty(difficulty) + notify

    def push(self, data: bytes) -> None:
        """Send unsolicited bytes (jobs); the server's connection class implements it."""
        raise NotImplementedError

    def set_extranonce(self, extranonce1: bytes) -> bytes:
        """`mining.set_extranonce` for clients that subscribed to it (else nothing)."""
        if not self.extranonce_subscribed:
            return b""
        return messages.set_extranonce(extranonce1, self.ctx.settings.extranonce2_size)

    def closed(self, now: float) -> None:
        """The connection is gone: leave the payout group, keep extranonce1 resumable."""
        sw = self.work
        if sw is None:
            return
        if sw.group_key is not None:
            members = self.ctx.groups.get(sw.group_key)
            if members is not None:
                members.pop(self, None)
                if not members:
                    del self.ctx.groups[sw.group_key]
        self.ctx.allocator.release(sw.en1, now)
        sw.core = None
        sw.core_work = None


_Handler = Callable[[Session, Any, Any, float], bytes]
_DISPATCH: dict[str, _Handler] = {
    "mining.submit": Session.on_submit,
    "mining.subscribe": Session.on_subscribe,
    "mining.authorize": Session.on_authorize,
    "mining.configure": Session.on_configure,
    "mining.suggest_difficulty": Session.on_suggest_difficulty,
    "mining.suggest_target": Session.on_suggest_target,
    "mining.extranonce.subscribe": Session.on_extranonce_subscribe,
    "mining.ping": Session.on_ping,
}
