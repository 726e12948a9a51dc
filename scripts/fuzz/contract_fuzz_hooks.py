"""Schemathesis hooks of scripts/contract-fuzz: real bearer tokens for the Profile API.

Every request to /v1/profiles/{id} carries an HS256 JWT minted here with the secret the API under
test was started with (CONTRACT_FUZZ_SECRET), its issuer and audience, and `sub` = the request's
own id, as a client acting for that user would send; so writes pass authorization, and the
`ignored_auth` check (requests without or with a broken token) still meets the real verifier.
No admin scope: a token for another subject would be refused with 403, which is documented.
"""

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.parse

import schemathesis

SECRET = os.environ["CONTRACT_FUZZ_SECRET"].encode()
ISSUER = os.environ.get("CONTRACT_FUZZ_ISSUER", "contract-fuzz")
AUDIENCE = os.environ.get("CONTRACT_FUZZ_AUDIENCE", "statecast")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(subject: str) -> str:
    """An HS256 JWT for `subject`, valid for an hour."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600}
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(SECRET, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


@schemathesis.auth(refresh_interval=None, retry_on=[]).apply_to(path_regex="^/v1/profiles/")
class ProfileSubjectToken:
    """A token whose subject is the profile the request is about."""

    def get(self, case, context):
        # Anything but None: schemathesis calls `set` only when `get` returned data.
        return "minted per request"

    def set(self, case, data, context):
        subject = (case.path_parameters or {}).get("id", "")
        if not isinstance(subject, str):
            subject = json.dumps(subject)
        # The id as the API decodes it from the path (schemathesis holds it percent-encoded).
        subject = urllib.parse.unquote(subject)
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {mint(subject)}"
