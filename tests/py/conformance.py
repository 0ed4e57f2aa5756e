"""Checks the dev agent with independent implementations: py-spiffe as the Workload API
client, PyJWT for the JWT-SVID, `cryptography` for the X.509 chain, raw grpcio for the
security-header rule and the three streaming/unary calls. Every client keeps its default
options: grpc-core sends the socket path as `:authority` on Unix sockets (grpc/grpc#38142),
and the agent must accept that as SPIRE does. Exits non-zero on the first failed check.

usage: conformance.py SOCKET_URI EXPECTED_SPIFFE_ID [FEDERATED_TD ...]
"""

import datetime
import json
import sys

import grpc
import jwt
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

AUDIENCE = "conformance-check"

checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


def main():
    socket, expected_id = sys.argv[1], sys.argv[2]
    federated = sys.argv[3:]
    td = TrustDomain(SpiffeId(expected_id).trust_domain.name)
    client = WorkloadApiClient(socket_path=socket, default_timeout=10)

    # --- X.509-SVID ---------------------------------------------------------------------------
    ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    check(str(svid.spiffe_id) == expected_id, f"default SVID id {svid.spiffe_id} == {expected_id}")
    leaf = svid.leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    check(uris == [expected_id], f"leaf has exactly one URI SAN {expected_id}: {uris}")
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    check(not bc.ca, "leaf is not a CA")
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    check(ku.digital_signature, "leaf keyUsage has digitalSignature")
    check(not ku.key_cert_sign and not ku.crl_sign, "leaf keyUsage has no keyCertSign/cRLSign")
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    check(ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku,
          "leaf EKU has serverAuth and clientAuth")
    now = datetime.datetime.now(datetime.timezone.utc)
    check(leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc, "leaf is currently valid")
    check(svid.private_key.public_key().public_numbers() == leaf.public_key().public_numbers(),
          "private key matches the leaf")

    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
    check(bundle is not None, f"X.509 bundle for {td.name} in the context")
    authorities = list(bundle.x509_authorities)
    check(len(authorities) >= 1, "bundle has at least one authority")
    verified = False
    for ca in authorities:
        try:
            leaf.verify_directly_issued_by(ca)
            verified = True
            ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            check(ca_bc.ca, "issuing authority is a CA")
        except Exception:  # noqa: BLE001 - try the next authority
            pass
    check(verified, "leaf signature verifies against the trust bundle")

    bundles = client.fetch_x509_bundles()
    check(bundles.get_bundle_for_trust_domain(td) is not None, "FetchX509Bundles has own bundle")
    for fed in federated:
        check(bundles.get_bundle_for_trust_domain(TrustDomain(fed)) is not None,
              f"FetchX509Bundles has federated bundle {fed}")

    # --- JWT-SVID -----------------------------------------------------------------------------
    jwt_svid = client.fetch_jwt_svid(audience={AUDIENCE})
    check(str(jwt_svid.spiffe_id) == expected_id, "JWT-SVID subject")
    token = jwt_svid.token
    header = jwt.get_unverified_header(token)
    check("kid" in header and header.get("alg") in ("ES256", "RS256"), f"JWT header {header}")

    jwt_bundles = client.fetch_jwt_bundles()
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
    check(jwt_bundle is not None, "JWT bundle for own trust domain")
    key = jwt_bundle.get_jwt_authority(header["kid"])
    check(key is not None, "JWT bundle holds the token's kid")
    claims = jwt.decode(token, key=key, algorithms=[header["alg"]], audience=AUDIENCE,
                        options={"require": ["exp", "sub", "aud", "iat"]})
    check(claims["sub"] == expected_id, "PyJWT-verified sub")
    for fed in federated:
        check(jwt_bundles.get_bundle_for_trust_domain(TrustDomain(fed)) is not None,
              f"FetchJWTBundles has federated bundle {fed}")
    try:
        jwt.decode(token, key=key, algorithms=[header["alg"]], audience="someone-else")
        check(False, "PyJWT rejects a wrong audience")
    except jwt.InvalidAudienceError:
        check(True, "")

    validated = client.validate_jwt_svid(token=token, audience=AUDIENCE)
    check(str(validated.spiffe_id) == expected_id, "ValidateJWTSVID returns the subject")
    try:
        client.validate_jwt_svid(token=token, audience="someone-else")
        check(False, "ValidateJWTSVID rejects a wrong audience")
    except Exception:  # noqa: BLE001 - any error is the expected refusal
        check(True, "")

    # --- security header ---------------------------------------------------------------------
    path = socket[len("unix://"):] if socket.startswith("unix://") else socket
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]), timeout=5)
            check(False, "call without workload.spiffe.io header is rejected")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                  f"missing header gives INVALID_ARGUMENT, got {e.code()}")
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=5)
        try:
            next(stream)
            check(False, "stream without header is rejected")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "stream without header: INVALID_ARGUMENT")

    # --- raw grpcio, default channel options, both unix target spellings ----------------------
    md = (("workload.spiffe.io", "true"),)
    raw = 0
    for target in (f"unix:{path}", f"unix://{path}"):
        with grpc.insecure_channel(target) as channel:
            stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
            first = next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md, timeout=10))
            check(first.svids and first.svids[0].spiffe_id == expected_id,
                  f"raw FetchX509SVID over {target}")
            resp = stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]),
                                     metadata=md, timeout=10)
            check(resp.svids and resp.svids[0].spiffe_id == expected_id,
                  f"raw FetchJWTSVID over {target}")
            bundles = next(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=md,
                                                timeout=10))
            check(f"spiffe://{td.name}" in bundles.bundles or td.name in bundles.bundles,
                  f"raw FetchJWTBundles over {target}: {list(bundles.bundles)}")
            raw += 3

    client.close()
    print(json.dumps({"checks": checks, "raw_calls": raw, "spiffe_id": expected_id,
                      "jwt_alg": header["alg"]}))


if __name__ == "__main__":
    main()
