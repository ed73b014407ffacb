"""Ansible filter plugin: a bcrypt hash that is the same on every run, for web config files.

Prometheus and Alertmanager read ``basic_auth_users: {USER: BCRYPT_HASH}``. ``bcrypt.gensalt()``
draws a new salt each time, so a template holding a fresh hash changes on every run (the
Molecule idempotence step fails, the service is told to reload for nothing). Here the salt is
derived from a context string (which host, which service, which user): the same password in
the same context gives the same hash, the same password on two hosts gives different hashes.

The salt is derived from the context only, never from the password: a salt computed by a fast
hash of the password would let anyone holding the file test guesses at SHA-256 speed instead
of bcrypt's, which is what bcrypt is there to prevent. The salt is public in any bcrypt hash;
its job is only to make equal passwords hash differently in different places.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import bcrypt
from ansible.errors import AnsibleFilterError

DOCUMENTATION = """
name: hxp_bcrypt
short_description: A bcrypt hash of a password with a salt derived from a context string
description:
  - Returns a C($2b$) bcrypt hash of the password (cost 10 by default) whose 16-byte salt is
    the first half of SHA-256 over a domain tag and the context, so a second run writes the
    same hash and the same password in two contexts (hosts, services) hashes differently.
  - Fails when the password is not a non-empty string of at most 72 bytes in UTF-8 (bcrypt
    reads no further) or the context is empty.
positional: context
options:
  _input:
    description: The password.
    type: str
    required: true
  context:
    description: Where the hash is used, e.g. C(prometheus-web:HOST:USER).
    type: str
    required: true
  rounds:
    description: bcrypt's cost (log2 of the iterations), 4 to 31.
    type: int
    default: 10
"""

EXAMPLES = """
hash: "{{ password | hxp_bcrypt('prometheus-web:' ~ inventory_hostname ~ ':hxp') }}"
"""

RETURN = """
_value:
  description: The bcrypt hash, 60 characters, as C(bcrypt.checkpw) and Go's bcrypt read it.
  type: str
"""

_DOMAIN = b"hxp_bcrypt salt v1\0"
# bcrypt writes its salt in base64 with this alphabet instead of A-Za-z0-9+/ (same bit order).
_TO_BCRYPT_ALPHABET = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)
_MAX_PASSWORD_BYTES = 72


def _salt(context: str, rounds: int) -> bytes:
    raw = hashlib.sha256(_DOMAIN + context.encode()).digest()[:16]
    encoded = base64.b64encode(raw).rstrip(b"=").translate(_TO_BCRYPT_ALPHABET)
    return b"$2b$%02d$%s" % (rounds, encoded)


def hxp_bcrypt(password: Any, context: Any, rounds: Any = 10) -> str:
    """The bcrypt hash of password, salted by context (see the module docstring)."""
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("hxp_bcrypt: the password must be a non-empty string")
    if not isinstance(context, str) or not context:
        raise AnsibleFilterError("hxp_bcrypt: give a non-empty context (host, service, user)")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 4 <= rounds <= 31:
        raise AnsibleFilterError(f"hxp_bcrypt: rounds must be an integer 4..31, not {rounds!r}")
    secret = password.encode()
    if len(secret) > _MAX_PASSWORD_BYTES:
        raise AnsibleFilterError(
            f"hxp_bcrypt: the password is {len(secret)} bytes in UTF-8; bcrypt reads at most "
            f"{_MAX_PASSWORD_BYTES}: use a shorter one"
        )
    return bcrypt.hashpw(secret, _salt(context, rounds)).decode()


class FilterModule:
    def filters(self) -> dict[str, Callable[..., str]]:
        return {"hxp_bcrypt": hxp_bcrypt}
