"""The hxp_bcrypt filter: stable hashes (idempotent converges) that bcrypt itself accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.conftest import load_file_module

Bcrypt = Callable[..., str]
PLUGIN = Path(__file__).resolve().parents[2] / "plugins/filter/hxp_bcrypt.py"


@pytest.fixture(scope="module")
def hxp_bcrypt() -> Bcrypt:
    filters: dict[str, Bcrypt] = (
        load_file_module("hxp_bcrypt_plugin", PLUGIN).FilterModule().filters()
    )
    return filters["hxp_bcrypt"]


def test_same_password_and_context_give_the_same_hash(hxp_bcrypt: Bcrypt) -> None:
    first = hxp_bcrypt("a-long-enough-password", "prometheus-web:h1:hxp")
    assert first == hxp_bcrypt("a-long-enough-password", "prometheus-web:h1:hxp")
    assert first.startswith("$2b$10$") and len(first) == 60
    assert bcrypt.checkpw(b"a-long-enough-password", first.encode())
    assert not bcrypt.checkpw(b"another-password-here", first.encode())


def test_each_context_gets_its_own_salt(hxp_bcrypt: Bcrypt) -> None:
    one = hxp_bcrypt("a-long-enough-password", "prometheus-web:h1:hxp")
    two = hxp_bcrypt("a-long-enough-password", "prometheus-web:h2:hxp")
    assert one[:29] != two[:29]  # "$2b$10$" + the 22-character salt


def test_the_salt_does_not_depend_on_the_password(hxp_bcrypt: Bcrypt) -> None:
    one = hxp_bcrypt("a-long-enough-password", "ctx")
    two = hxp_bcrypt("another-long-password", "ctx")
    assert one[:29] == two[:29]
    assert one != two


@pytest.mark.parametrize(("password", "context"), [("x" * 73, "ctx"), ("", "ctx"), ("pw", "")])
def test_unusable_input_is_an_error(hxp_bcrypt: Bcrypt, password: str, context: str) -> None:
    with pytest.raises(AnsibleFilterError):
        hxp_bcrypt(password, context)
