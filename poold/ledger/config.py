"""The ledger's settings: `[ledger]` plus the payout keys of `[pool]`, as one frozen dataclass.

`LedgerConfig.from_config(cfg)` builds it from the daemon's `poold.config.Config`; tests and
benchmarks construct it directly. The defaults are the option table's (`poold.config.OPTIONS`,
declared once), and `validate()` applies the same rules as the config's own checks, raising
ConfigError naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from poold.config import PAYOUTS, default
from poold.errors import ConfigError
from poold.ledger.store import resolve_url

if TYPE_CHECKING:
    from poold.config import Config

PAYOUT_SCHEMES = PAYOUTS
MIN_RETENTION_S = 2 * 86400.0


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    url: str = field(default="", repr=False)  # may carry a password
    state_dir: str = default("pool.state_dir")
    instance_id: int = default("pool.instance_id")
    # The worker process index of `--processes` (0 if one): each writer has its own share
    # chain, `shares:<instance_id>:<writer>` (poold.ledger.chain).
    writer: int = 0
    payout: str = default("pool.payout")
    network: str = "main"  # poold.bitcoin.address.Network value, for addresses in the audit
    # Share batches are committed at least this often: a kill -9 loses at most this window.
    flush_interval_ms: float = default("ledger.flush_interval_ms")
    buffer_max_shares: int = default("ledger.buffer_max_shares")
    # Largest share batch in one commit: bounds the commit latency when the flusher is behind
    # (2-3 us a share: 10k shares commit in ~20-40 ms). Per-commit costs (round trips, the
    # per-account bucket upserts) shrink per share as batches grow: PostgreSQL took ~370k
    # shares/s in batches of 5k, ~450k in batches of 10k (tests/bench/ledger.py).
    batch_max_shares: int = default("ledger.batch_max_shares")
    pplns_window_factor: float = default("ledger.pplns_window_factor")
    dust_sat: int = default("ledger.dust_sat")
    max_outputs: int = default("ledger.max_outputs")
    fee_percent: float = default("pool.fee_percent")
    fee_address: str = ""
    reserve_address: str = ""
    tariff_per_kwh: float = default("ledger.tariff_per_kwh")
    # A found block not committed to the store within this goes to the local journal instead.
    block_write_timeout_s: float = default("ledger.block_write_timeout_s")
    # payout = split: how often the cached PPLNS window and balances are re-read.
    split_refresh_s: float = default("ledger.split_refresh_s")
    # payout = split: bytes of payout outputs (fee output included) one coinbase may carry.
    # ASIC firmware caps the coinbase (730 bytes: DATUM's generic Antminer class, the default of
    # poold.bitcoin.coinbase); the rest of a coinbase (a scriptSig of up to 100 bytes, the
    # witness commitment output, the fixed fields) takes up to 200: 730 - 200 = 530. The
    # ledger's chain commitment (an OP_RETURN output of 47 bytes, docs/AUDIT.md) is part of it.
    split_max_output_bytes: int = default("ledger.split_max_output_bytes")
    # Shares older than this are rolled up per (worker, account, hour) and deleted; 0 keeps
    # every share. It must cover the PPLNS window and the 100 blocks until maturity: at least
    # two days is enforced (a small pool's window can span longer: size it to the pool).
    share_retention_s: float = default("ledger.share_retention_s")
    # pplns/split: login name -> payout address (poold.accounts); other accounts must be
    # addresses themselves to be paid
    accounts: tuple[tuple[str, str], ...] = ()
    # [api] public_windows: each block's window (share ids, worker names, difficulties) is
    # served without a token (poold.ledger.export.public_windows).
    public_windows: bool = False
    source: str = ""

    @property
    def effective_url(self) -> str:
        return resolve_url(self.url, self.state_dir)

    @property
    def journal_path(self) -> Path:
        """Append-only JSON-lines file for blocks the store could not take (replayed at start)."""
        return Path(self.state_dir) / f"ledger-journal-{self.instance_id}.jsonl"

    @classmethod
    def from_config(cls, cfg: Config) -> LedgerConfig:
        out = cls(
            url=cfg.ledger.url, state_dir=cfg.pool.state_dir, instance_id=cfg.pool.instance_id,
            payout=cfg.pool.payout, network=str(cfg.pool.network),
            flush_interval_ms=cfg.ledger.flush_interval_ms,
            buffer_max_shares=cfg.ledger.buffer_max_shares,
            pplns_window_factor=cfg.ledger.pplns_window_factor, dust_sat=cfg.ledger.dust_sat,
            max_outputs=cfg.ledger.max_outputs, fee_percent=cfg.pool.fee_percent,
            fee_address=cfg.pool.fee_address, reserve_address=cfg.pool.reserve_address,
            tariff_per_kwh=cfg.ledger.tariff_per_kwh,
            batch_max_shares=cfg.ledger.batch_max_shares,
            block_write_timeout_s=cfg.ledger.block_write_timeout_s,
            split_refresh_s=cfg.ledger.split_refresh_s,
            split_max_output_bytes=cfg.ledger.split_max_output_bytes,
            share_retention_s=cfg.ledger.share_retention_s, accounts=cfg.accounts,
            public_windows=cfg.api.public_windows, source=cfg.source)
        out.validate()
        return out

    def validate(self) -> None:
        src = self.source
        if self.payout not in PAYOUT_SCHEMES:
            raise ConfigError("pool.payout", f"must be one of {', '.join(PAYOUT_SCHEMES)}", src)
        if self.payout == "reserve" and not self.reserve_address:
            raise ConfigError("pool.reserve_address", "required when payout = reserve", src)
        if self.payout in ("pplns", "split") and not self.fee_address:
            raise ConfigError("pool.fee_address",
                              f"required when payout = {self.payout} (the pool's output)", src)
        if not (math.isfinite(self.fee_percent) and 0.0 <= self.fee_percent <= 100.0):
            raise ConfigError("pool.fee_percent", "must be within [0, 100]", src)
        if not self.flush_interval_ms > 0:
            raise ConfigError("ledger.flush_interval_ms", "must be > 0", src)
        if self.buffer_max_shares < 1:
            raise ConfigError("ledger.buffer_max_shares", "must be >= 1", src)
        if not self.pplns_window_factor > 0:
            raise ConfigError("ledger.pplns_window_factor", "must be > 0", src)
        if self.dust_sat < 1:
            raise ConfigError("ledger.dust_sat", "must be >= 1", src)
        if self.max_outputs < 1:
            raise ConfigError("ledger.max_outputs", "must be >= 1", src)
        if self.split_max_output_bytes < 2 * 43 + 47:
            raise ConfigError("ledger.split_max_output_bytes",
                              "must leave room for a payout, the fee output and the chain "
                              "commitment (>= 133)", src)
        if self.tariff_per_kwh < 0:
            raise ConfigError("ledger.tariff_per_kwh", "must be >= 0", src)
        if self.share_retention_s and self.share_retention_s < MIN_RETENTION_S:
            raise ConfigError("ledger.share_retention_s",
                              f"must be 0 (keep all) or at least {MIN_RETENTION_S:.0f} s", src)
        url = self.effective_url
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError("ledger.url", "must be sqlite:///PATH or postgresql://...", src)


# Block 840,000 (the fourth halving) was mined at 2024-04-20 00:09:27 UTC; consensus halves the
# subsidy every 210,000 blocks (regtest: every 150), from 50 BTC.
_ANCHOR_HEIGHT, _ANCHOR_TIME = 840_000, 1_713_571_767.0


def estimated_subsidy_sat(network: str, now: float) -> int:
    """The block subsidy at `now`, without a node: mainnet's height extrapolated at one block
    per 600 s (the test networks follow the same schedule, at other heights; used as is).
    Regtest's height is unknown: its first subsidy, 50 BTC, the most a fee can come from."""
    if network == "regtest":
        return 50 * 100_000_000
    height = _ANCHOR_HEIGHT + max(0, int((now - _ANCHOR_TIME) // 600))
    return (50 * 100_000_000) >> min(height // 210_000, 63)


def fee_warnings(cfg: LedgerConfig, now: float) -> list[str]:
    """Fee settings that can never be paid: split (and solo) waive a fee below `dust_sat`
    (no dust output), so a fee percent too small for the current subsidy is never taken."""
    from poold.work.fees import fee_of, fee_ppm

    if cfg.payout not in ("split", "solo") or not cfg.fee_address or not cfg.fee_percent:
        return []
    subsidy = estimated_subsidy_sat(cfg.network, now)
    fee = fee_of(subsidy, fee_ppm(cfg.fee_percent))
    if fee >= cfg.dust_sat:
        return []
    least = cfg.dust_sat * 100 / subsidy
    return [f"pool.fee_percent: {cfg.payout} fee {cfg.fee_percent}% of the current subsidy "
            f"({subsidy} sat) is {fee} sat, below ledger.dust_sat ({cfg.dust_sat} sat): it is "
            f"waived on every block without at least {cfg.dust_sat - fee} sat more of "
            f"transaction fees (raise it to at least {least:.4g}% or lower dust_sat)"]
