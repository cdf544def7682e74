"""People, as opposed to accounts.

An account (`ec2-user` on config-server) is not a person; an ssh key usually is. The config
file's `people` section says which keys and accounts belong to whom, and
`shared_accounts` lists accounts that never identify anyone by themselves.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Person:
    name: str
    ssh_keys: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()     # "user" (any host) or "user@host-glob"


DEFAULT_SHARED = ("root", "ec2-user", "ubuntu", "admin", "centos", "debian", "deploy")


@dataclass(frozen=True)
class Identity:
    people: tuple[Person, ...] = ()
    shared_accounts: tuple[str, ...] = DEFAULT_SHARED
    _by_key: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        for person in self.people:
            for key in person.ssh_keys:
                self._by_key[_fp(key)] = person.name

    def person_for_key(self, key_fp: str | None) -> str | None:
        return self._by_key.get(_fp(key_fp)) if key_fp else None

    def person_for_account(self, user: str, host: str) -> str | None:
        for person in self.people:
            for acct in person.accounts:
                name, _, host_glob = acct.partition("@")
                if name == user and (not host_glob or fnmatch.fnmatchcase(host, host_glob)):
                    return person.name
        return None

    def is_shared(self, user: str) -> bool:
        return user in self.shared_accounts


def _fp(key: str) -> str:
    # "SHA256:abc" and "abc" name the same key; sshd prints the former.
    return key if key.startswith(("SHA256:", "MD5:")) else f"SHA256:{key}"
