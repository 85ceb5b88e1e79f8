"""Payout accounts: which address a pooled account is paid at.

In the pooled payout modes (`pplns`, `split`) every account the ledger credits must be payable:
the login's account part (`account.worker`) is either an address of the configured network, or a
name that the operator maps to one. The map comes from the `[accounts]` table of the config
(`bob = "bc1q..."`) and from `pool.accounts_file`, a text file of `NAME ADDRESS` lines (`#`
starts a comment; blank lines are ignored), which is easier to generate from a customer
database. Both are re-read on SIGHUP.

A login whose account is neither is refused at `mining.authorize` (Stratum error 24), so no miner
can make the split coinbase unplannable (poold.stratum.auth). Balances recorded before a name
was mapped stay carried (not paid) until the name has an address (poold.ledger.payouts.split).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from poold.bitcoin.address import AddressError, Network, address_to_script
from poold.errors import PooldError

# The account part of a login: what the ledger stores and Prometheus never sees.
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9_\-:@+]{1,64}$")
NAME_RULE = "letters, digits, _-:@+; at most 64"


class AccountsError(PooldError, ValueError):
    """A malformed accounts entry; the message names the entry (and the line of a file)."""


def parse_accounts_text(text: str) -> list[tuple[str, str]]:
    """`NAME ADDRESS` lines of an accounts file as (name, address) pairs, in file order."""
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AccountsError(f"line {number}: expected NAME ADDRESS, got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def check_accounts(pairs: Iterable[tuple[str, str]], network: Network,
                   where: str = "") -> dict[str, str]:
    """Validate (name, address) pairs for `network` into a dict; AccountsError names the first
    bad entry (`where` prefixes each message, e.g. a file name)."""
    out: dict[str, str] = {}
    for name, address in pairs:
        if not ACCOUNT_NAME.match(name):
            raise AccountsError(f"{where}{name!r}: invalid account name ({NAME_RULE})")
        try:
            address_to_script(address, network)
        except AddressError as exc:
            raise AccountsError(f"{where}{name!r}: {exc}") from None
        if name in out and out[name] != address:
            raise AccountsError(f"{where}{name!r}: mapped twice ({out[name]} and {address})")
        out[name] = address
    return out


@dataclass(frozen=True, slots=True)
class AccountBook:
    """Account name -> payout address for one network, without I/O (cheap per login)."""

    network: Network
    names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, network: Network, names: Mapping[str, str] | None = None) -> AccountBook:
        return cls(network, MappingProxyType(dict(names or {})))

    def address_of(self, account: str) -> str | None:
        """The address `account` is paid at: its mapping, else itself if it is an address of
        the network; None if it has none."""
        mapped = self.names.get(account)
        if mapped is not None:
            return mapped
        try:
            address_to_script(account, self.network)
        except AddressError:
            return None
        return account

    def script_of(self, account: str) -> bytes | None:
        address = self.address_of(account)
        return None if address is None else address_to_script(address, self.network)
