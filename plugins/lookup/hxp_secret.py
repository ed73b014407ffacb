"""Ansible lookup plugin: resolve secret references that `hxp render` wrote as data.

The rendered inventory holds, per secret field of hxp.yml, a reference in ``hxp_secret_refs``
(``{scheme: env|file|vault, value: ...}``) and a role variable with one fixed expression:
``{{ lookup('hxp_secret', hxp_secret_refs['database.router_password']) }}``. The reference is
an argument, never part of the expression, so no string from hxp.yml is ever evaluated.

An unresolvable reference fails the run on the controller, naming the field and the reference,
before the value could reach a host as an empty secret. Messages never contain a secret value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: hxp_secret
short_description: Resolve a secret reference rendered by hxp render
description:
  - Takes references as data (mappings with C(scheme) and C(value)) and returns the secrets.
  - C(env) reads the controller's environment, C(file) reads a file on the controller (trailing
    whitespace stripped, as ansible.builtin.file does), C(vault) returns an Ansible variable,
    typically defined in an ansible-vault encrypted vars file.
  - A missing, empty or unreadable secret is an error naming the reference.
  - A secret is one line, unless C(pem) is set.
options:
  _terms:
    description: Secret references, as hxp render writes them in hxp_secret_refs.
    required: true
  pem:
    description: The secret is PEM (a certificate or a key), several lines ending with a newline.
    type: bool
    default: false
"""

_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Secrets end up in environment files and command lines, which are line oriented.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# PEM is lines of text: line ends are its only control characters.
_PEM_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class LookupModule(LookupBase):
    def run(
        self, terms: list[Any], variables: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[str]:
        pem = bool(kwargs.get("pem", False))
        return [self._resolve(ref, variables or {}, pem=pem) for ref in terms]

    def _resolve(self, ref: Any, variables: Mapping[str, Any], *, pem: bool = False) -> str:
        if not (
            isinstance(ref, Mapping)
            and set(ref) == {"scheme", "value"}
            and ref["scheme"] in ("env", "file", "vault")
            and isinstance(ref["value"], str)
        ):
            raise AnsibleError(
                "hxp_secret takes a secret reference as hxp render writes it "
                "({scheme: env|file|vault, value: ...}); render the inventory again"
            )
        scheme, value = ref["scheme"], ref["value"]
        where = f"secret reference {scheme}:{value}"
        secret = self._read(scheme, value, where, variables)
        if not secret:
            raise AnsibleError(f"{where}: the secret is empty; put the secret there")
        if pem:
            secret = secret.replace("\r\n", "\n").strip()
            if not secret.startswith("-----BEGIN ") or _PEM_CONTROL.search(secret):
                raise AnsibleError(f"{where}: the secret is not PEM text (-----BEGIN ...)")
            return secret + "\n"
        if _CONTROL.search(secret):
            raise AnsibleError(
                f"{where}: the secret holds a newline or another control character; a secret "
                "must be one line"
            )
        return secret

    def _read(self, scheme: str, value: str, where: str, variables: Mapping[str, Any]) -> str:
        if scheme == "env":
            if value not in os.environ:
                raise AnsibleError(
                    f"{where}: the environment variable is not set on the controller; export "
                    "it and run again"
                )
            return os.environ[value]
        if scheme == "file":
            try:
                with open(value, encoding="utf-8") as handle:
                    return handle.read().rstrip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise AnsibleError(
                    f"{where}: cannot read the file on the controller: {reason}"
                ) from None
        if not _VARIABLE_NAME.match(value) or value not in variables:
            raise AnsibleError(
                f"{where}: the variable is not defined; pass the vault file that defines it "
                "(for example -e @vault.yml --ask-vault-pass)"
            )
        secret = self._templar.template(variables[value])
        if not isinstance(secret, str):
            raise AnsibleError(f"{where}: the variable is not a string")
        return secret
