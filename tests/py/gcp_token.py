"""Gets a Google access token with the real google-auth client, unmodified and with default
options, the way an application would: google.auth.default() (Application Default
Credentials) finds the "GCE metadata server" through GCE_METADATA_HOST / GCE_METADATA_IP (the
broker), then the credentials are refreshed.

usage: gcp_token.py [SCOPE...]
prints {"token", "project", "email", "expiry"}; on failure prints the exception's type and
message to stderr and exits 1.
"""

import json
import sys

import google.auth
from google.auth.transport.requests import Request


def main() -> int:
    scopes = sys.argv[1:] or None
    try:
        credentials, project = google.auth.default(scopes=scopes)
        credentials.refresh(Request())
    except Exception as e:  # the test asserts on the library's own error text
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "token": credentials.token,
                "project": project,
                "email": credentials.service_account_email,
                "expiry": credentials.expiry.isoformat(),
                "type": type(credentials).__module__ + "." + type(credentials).__name__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
