"""`mining.authorize` usernames: who the miner is and whom its blocks pay.

Solo mode (`pool.payout = "solo"`): the username is the payout address, optionally followed by
`.worker` (reference/pools.md §3.4). The address is checked locally for the configured network
with `poold.bitcoin.address` — no node round trip per login — and an invalid one is refused with
the reason (error 24). The account is the address. Other modes: the username is
`account.worker`; the account is what the ledger credits, the coinbase pays the pool's script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from poold.bitcoin.address import AddressError, Network, address_to_script

_ACCOUNT = re.compile(r"^[A-Za-z0-9_\-:@+]{1,64}$")


class AuthError(ValueError):
    """The username cannot be authorized; the message goes back to the miner."""


@dataclass(frozen=True, slots=True)
class Identity:
    worker: str  # the full username as the miner sent it (what `mining.submit` repeats)
    account: str
    payout_script: bytes | None  # solo: the address's scriptPubKey


@dataclass(frozen=True, slots=True)
class Authorizer:
    network: Network
    solo: bool

    def authorize(self, username: str) -> Identity:
        name, _, _worker = username.partition(".")
        if self.solo:
            try:
                script = address_to_script(name, self.network)
            except AddressError as exc:
                raise AuthError(f"invalid payout address {name!r}: {exc}") from None
            return Identity(username, name, script)
        if not _ACCOUNT.match(name):
            raise AuthError(f"invalid account name {name!r} (letters, digits, _-:@+; max 64)")
        return Identity(username, name, None)
