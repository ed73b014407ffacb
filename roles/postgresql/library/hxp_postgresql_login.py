#!/usr/bin/python3
"""Ansible module: a PostgreSQL login role whose password is set only when it differs.

The password is compared with the SCRAM-SHA-256 verifier stored in pg_authid (the check the
server itself makes at login), so a second run changes nothing. A new password is sent as a
verifier computed here: the plaintext never reaches the server, its logs or a process list.
psql runs as the postgres OS user over the local socket (peer authentication).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: hxp_postgresql_login
short_description: Create a PostgreSQL login role and keep its SCRAM password in step
options:
  name: {type: str, required: true, description: Role name.}
  password: {type: str, required: true, no_log: true, description: Its password.}
  port: {type: int, default: 5432, description: Port of the local cluster.}
"""

ITERATIONS = 4096
ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


def _keys(salted: bytes) -> tuple[bytes, bytes]:
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def verifier(password: str) -> str:
    salt = os.urandom(16)
    stored, server = _keys(_salted(password, salt, ITERATIONS))
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${ITERATIONS}:{b64(salt)}${b64(stored)}:{b64(server)}"


def matches(stored_verifier: str, password: str) -> bool:
    try:
        method, rest = stored_verifier.split("$", 1)
        params, keys = rest.split("$", 1)
        iterations, salt = params.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
    except ValueError:
        return False  # md5 or no password: not what we want either
    if method != "SCRAM-SHA-256":
        return False
    stored, server = _keys(_salted(password, base64.b64decode(salt), int(iterations)))
    return hmac.compare_digest(base64.b64encode(stored).decode(), stored_key) and (
        hmac.compare_digest(base64.b64encode(server).decode(), server_key)
    )


def psql(module: AnsibleModule, sql: str, **variables: str) -> str:
    argv = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1"]
    argv += ["-p", str(module.params["port"]), "-d", "postgres"]
    for key, value in variables.items():
        argv += ["-v", f"{key}={value}"]
    result = subprocess.run(argv, input=sql, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        module.fail_json(msg=f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "port": {"type": "int", "default": 5432},
        },
        supports_check_mode=True,
    )
    name, password = module.params["name"], module.params["password"]
    current = psql(
        module,
        "SELECT rolcanlogin::int || ':' || rolsuper::int || ':' || coalesce(rolpassword, '') "
        "FROM pg_authid WHERE rolname = :'name';",
        name=name,
    )
    if current and current.startswith("1:0:") and matches(current.split(":", 2)[2], password):
        module.exit_json(changed=False, name=name)
    action = "ALTER" if current else "CREATE"
    if not module.check_mode:
        psql(
            module,
            f"{action} ROLE :\"name\" {ATTRIBUTES} PASSWORD :'verifier';",
            name=name,
            verifier=verifier(password),
        )
    module.exit_json(changed=True, name=name, action=action.lower())


if __name__ == "__main__":
    main()
