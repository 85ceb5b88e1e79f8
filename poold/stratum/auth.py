"""`mining.authorize` usernames: who the miner is and whom its blocks pay.

Solo mode (`pool.payout = "solo"`): the username is the payout address, optionally followed by
`.worker`. The address is checked locally for the configured network with
`poold.bitcoin.address` — no node round trip per login — and an invalid one is refused with the
reason (error 24). The account is the address.

Pooled modes (`pplns`, `split`): the username is `account.worker`, and the account must be
payable: an address of the network, or a name mapped to one (`[accounts]`, `pool.accounts_file`;
poold.accounts). Anything else is refused at authorize, so no login can leave the ledger with a
credit that the split coinbase cannot pay. `reserve` mode pays one fixed address: the account is
only a label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poold.accounts import ACCOUNT_NAME, NAME_RULE, AccountBook
from poold.bitcoin.address import AddressError, Network, address_to_script
from poold.errors import PooldError


class StratumAuthError(PooldError, ValueError):
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
    # pooled payouts (pplns, split): accounts must have an address; None = labels only (reserve)
    accounts: AccountBook | None = field(default=None)

    def authorize(self, username: str) -> Identity:
        name, _, _worker = username.partition(".")
        if self.solo:
            try:
                script = address_to_script(name, self.network)
            except AddressError as exc:
                raise StratumAuthError(f"invalid payout address {name!r}: {exc}") from None
            return Identity(username, name, script)
        if not ACCOUNT_NAME.match(name):
            raise StratumAuthError(f"invalid account name {name!r} ({NAME_RULE})")
        if self.accounts is not None and self.accounts.address_of(name) is None:
            raise StratumAuthError(f"unknown account {name!r}: not a {self.network.value} address "
                            "and not a name the pool maps to one (ask the operator)")
        return Identity(username, name, None)
