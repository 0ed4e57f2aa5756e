#!/bin/sh
# Vault's side of `iam-broker vault` (run once, as an operator, with the Vault CLI):
# JWT auth trusting SPIRE's OIDC discovery provider, and a role per workload bound to its
# SPIFFE ID. The broker logs in with `{"role": "web", "jwt": <JWT-SVID for aud "vault">}`.
#
# - jwt-auth-config.json: oidc_discovery_url / bound_issuer = the issuer SPIRE's OIDC discovery
#   provider publishes (its `domains` entry, over https). Vault fetches
#   /.well-known/openid-configuration and the JWKS from it and follows key rotation itself.
#   A private CA on that endpoint: add "oidc_discovery_ca_pem".
# - role-web.json: `sub` must equal the workload's SPIFFE ID (bound_subject), `aud` must hold
#   "vault" (the broker's default --audience); service tokens, so the broker can renew them
#   (batch tokens cannot be renewed: the broker would log in again at each half-life).
set -eu
cd "$(dirname "$0")"
vault auth enable jwt
vault write auth/jwt/config @jwt-auth-config.json
vault policy write web-kv-read policy-web-kv-read.hcl
vault write auth/jwt/role/web @role-web.json
