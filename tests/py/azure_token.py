"""Gets Entra ID tokens with the real azure-identity client, unmodified and with default
options, the way an application would: only IDENTITY_ENDPOINT and IDENTITY_HEADER are set, so
the credential uses the App Service managed identity protocol (the broker).

usage: azure_token.py managed|default SCOPE...
prints one JSON object {scope: {"token": ..., "expires_on": int}}; on failure prints the
exception's type and message to stderr and exits 1.
"""

import json
import sys

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential


def main() -> int:
    kind, scopes = sys.argv[1], sys.argv[2:]
    credential = ManagedIdentityCredential() if kind == "managed" else DefaultAzureCredential()
    out = {}
    try:
        for scope in scopes:
            token = credential.get_token(scope)
            out[scope] = {"token": token.token, "expires_on": token.expires_on}
    except Exception as e:  # the test asserts on the SDK's own error text
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
