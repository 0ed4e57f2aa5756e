"""Reads and writes a KV v2 secret with the real hvac client, unmodified and with default
options, the way an application would: hvac.Client() takes VAULT_ADDR (the broker's proxy) and
VAULT_TOKEN or ~/.vault-token if present; with neither it sends no token and the proxy adds one.

usage: vault_kv.py read PATH            prints the secret's data
       vault_kv.py write PATH KEY=VALUE  prints the new version
       vault_kv.py loop PATH STOPFILE   reads until STOPFILE exists; prints {"reads", "failures"}
On failure prints the exception's type and message to stderr and exits 1.
"""

import json
import os
import sys

import hvac


def read(client, path):
    r = client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    return r["data"]["data"]


def main() -> int:
    mode, path = sys.argv[1], sys.argv[2]
    client = hvac.Client()
    try:
        if mode == "read":
            print(json.dumps(read(client, path)))
        elif mode == "write":
            key, value = sys.argv[3].split("=", 1)
            r = client.secrets.kv.v2.create_or_update_secret(path=path, secret={key: value})
            print(json.dumps({"version": r["data"]["version"]}))
        elif mode == "loop":
            stop = sys.argv[3]
            reads, failures = 0, []
            while not os.path.exists(stop):
                try:
                    read(client, path)
                    reads += 1
                except Exception as e:  # counted, the test asserts there are none
                    failures.append(f"{type(e).__name__}: {e}")
            print(json.dumps({"reads": reads, "failures": failures}))
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            return 2
    except Exception as e:  # the test asserts on the library's own error text
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
