//! `sds-bridge jwt-authn-config`: prints the Envoy HTTP filters that check JWT-SVIDs against
//! the bridge's JWKS endpoint ([`crate::jwks`]) and authorize by SPIFFE ID, so nobody
//! hand-writes one provider per trust domain (`docs/protocols.md#jwt-authn`).
//!
//! What it writes, and why each piece is there:
//!
//! 1. `header_mutation` removing any client-sent `x-spiffe-id`: `jwt_authn`'s
//!    `claim_to_headers` *adds* a header, so a forged copy would otherwise reach the app next to
//!    the real one. (A route's `request_headers_to_remove` runs in the router, after
//!    `jwt_authn`, and would remove the real one too.)
//! 2. `jwt_authn` with one provider per trust domain: its own JWKS (`/jwks/<td>`) and
//!    `subjects: {prefix: "spiffe://<td>/"}`, so a key of trust domain B never vouches for an ID
//!    of trust domain A (envoy#31455); `audiences`; `require_expiration` with 1 s of clock skew
//!    (Envoy's default accepts tokens 60 s past `exp`, and 0 means that default; injectors
//!    refresh at half-life, so a valid sender never needs more); `remote_jwks` with
//!    `async_fetch` (keys fetched before the first request and refreshed in the background,
//!    every `cache_duration − 5 s`: that is the revocation delay); `claim_to_headers` `sub` →
//!    `x-spiffe-id`; `payload_in_metadata` for RBAC; the token is not forwarded; `requires_any`
//!    across the providers. No `jwt_cache_config`: Envoy's cache of verified tokens is not
//!    cleared when the JWKS changes, so a cached token of a revoked key or trust domain kept
//!    being accepted (measured: still 200 15 s after the drop, where without it 401 came in
//!    under a second); it would trade revocation for the signature check. Envoy 1.40's source
//!    says the same: the cache is per provider and worker, a JWKS refresh replaces only the
//!    keys, a hit re-checks only time and audience, and no setting bounds an entry but `exp`.
//! 3. With `--allow-spiffe-id`, an RBAC filter allowing only those IDs: on the JWT `sub` from
//!    `jwt_authn`'s metadata (`--principal jwt`), or on the mTLS peer's URI SAN
//!    (`--principal x509`, for listeners whose client certificates come through sds-bridge).
//! 4. The HTTP connection manager's `local_reply_config`, turning `jwt_authn`'s 403 for a valid
//!    token of another audience into 401: a token for someone else is an invalid credential
//!    here (RFC 6750 `invalid_token`, which the `www-authenticate` header already says), and
//!    403 must keep meaning "authenticated, not allowed" (RBAC). `jwt_authn` has no setting for
//!    it and sets no response flag; the mapper's CEL filter matches its response code details
//!    (`jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}`) exactly, so RBAC's 403
//!    (`rbac_access_denied…`) and every other local reply pass unchanged. Mappers run only on
//!    local replies: requests that reach the app pay nothing.
//!
//! With `--ecds` (`docs/sds-bridge.md#ecds-mode`), item 2 is instead an `HttpFilter` named
//! [`crate::ecds::RESOURCE_NAME`] whose config comes from the bridge over ECDS (keys inline,
//! token cache on, new config on every key change); the listener warms until the first push,
//! and a deny-all `default_config` applies if none comes within Envoy's initial fetch timeout;
//! the cluster is the bridge's socket, not a JWKS endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sidecar_runtime::ConfigError;
use sidecar_runtime::config::{self, Listen};
use workload_client::spiffe::{SpiffeId, TrustDomain};

/// The bridge's cluster name in the ECDS mode.
pub const DEFAULT_BRIDGE_CLUSTER: &str = "sds_bridge";
/// The provider of the ECDS mode's deny-all default config.
pub const DENY_ALL_PROVIDER: &str = "no-config-from-sds-bridge-yet";

/// Where the JWKS endpoint listens by default in the generated config (9012 is the admin's).
pub const DEFAULT_JWKS_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9013);
/// The Envoy cluster name for the JWKS endpoint.
pub const DEFAULT_JWKS_CLUSTER: &str = "sds_bridge_jwks";
/// `remote_jwks.cache_duration`: Envoy refetches 5 s before it ends, so keys that leave a
/// bundle stop being accepted within about 25 s.
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(30);
/// Envoy's async fetcher refetches `RefetchBeforeExpiredSec` (5 s) before the cache ends;
/// shorter durations would refetch in a tight loop.
pub const MIN_CACHE_DURATION: Duration = Duration::from_secs(6);
/// The `payload_in_metadata` key RBAC reads `sub` from.
pub const PAYLOAD_METADATA_KEY: &str = "jwt_payload";
/// The header the authenticated SPIFFE ID reaches the app in.
pub const SPIFFE_ID_HEADER: &str = "x-spiffe-id";
/// The response code details of `jwt_authn`'s 403 for a token of another audience (Envoy's
/// `jwt_authn_access_denied{<status, spaces as _>}`, jwt_verify_lib's `JwtAudienceNotAllowed`).
pub const AUDIENCE_DENIED_DETAILS: &str =
    "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}";

/// Which identity the RBAC filter checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Principal {
    /// The JWT-SVID's `sub`, from `jwt_authn`'s metadata.
    Jwt,
    /// The mTLS peer certificate's URI SAN (X.509-SVID).
    X509,
}

/// Which part to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// A YAML document with `local_reply_config:`, `http_filters:` and `clusters:`.
    All,
    /// The HTTP filters only (list items, for a listener's `http_filters`).
    Filters,
    /// The cluster the filters need only (a list item, for `static_resources.clusters`): the
    /// JWKS endpoint's, or with `--ecds` the bridge's.
    Cluster,
    /// The RBAC filter only (a list item).
    Rbac,
    /// The HTTP connection manager's `local_reply_config` (an HCM field: wrong audience → 401).
    LocalReply,
    /// A whole Envoy bootstrap that runs as printed (`envoy -c`): an HTTP listener on
    /// `--listen` doing all of the above in front of the app at `--upstream`, admin on
    /// `--envoy-admin`. For the JWT principal; an mTLS listener needs SDS certificates.
    Bootstrap,
}

/// `sds-bridge jwt-authn-config` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct JwtAuthnArgs {
    /// A trust domain whose JWT-SVIDs are accepted (own and federated); repeatable. With
    /// --ecds the bridge's --ecds-trust-domain decides instead.
    #[arg(long = "trust-domain", required_unless_present = "ecds")]
    pub trust_domains: Vec<String>,
    /// An accepted audience (the token's `aud` must hold one); repeatable. With --ecds the
    /// bridge's --ecds-audience decides instead.
    #[arg(long = "audience", required_unless_present = "ecds")]
    pub audiences: Vec<String>,
    /// ECDS mode: the jwt_authn filter takes its config (keys inline) from the bridge over
    /// ECDS (bridge started with --ecds-audience and --ecds-trust-domain); the listener waits
    /// for the first push, then a deny-all default after 15 s; no JWKS endpoint or cluster.
    #[arg(long, conflicts_with_all = ["trust_domains", "audiences", "jwks_address", "jwks_cluster", "cache_duration"])]
    pub ecds: bool,
    /// --ecds: the bridge's --listen address (unix:///path or tcp://127.0.0.1:PORT)
    /// [default: unix:///var/run/secrets/workload-spiffe-uds/socket].
    #[arg(long)]
    pub bridge_address: Option<String>,
    /// --ecds: Envoy cluster name for the bridge [default: sds_bridge].
    #[arg(long)]
    pub bridge_cluster: Option<String>,
    /// The bridge's --jwks-listen address [default: 127.0.0.1:9013].
    #[arg(long)]
    pub jwks_address: Option<String>,
    /// Envoy cluster name for the JWKS endpoint [default: sds_bridge_jwks].
    #[arg(long)]
    pub jwks_cluster: Option<String>,
    /// remote_jwks cache_duration (at least 6s; keys leave Envoy about 5 s before it ends)
    /// [default: 30s].
    #[arg(long)]
    pub cache_duration: Option<String>,
    /// Allow only this SPIFFE ID (RBAC); repeatable [default: no RBAC filter].
    #[arg(long = "allow-spiffe-id")]
    pub allow_spiffe_ids: Vec<String>,
    /// Which identity the RBAC filter checks.
    #[arg(long, value_enum, default_value = "jwt")]
    pub principal: Principal,
    /// What to print.
    #[arg(long, value_enum, default_value = "all")]
    pub part: Part,
    /// `--part bootstrap`: the listener's address [default: 127.0.0.1:10000].
    #[arg(long)]
    pub listen: Option<String>,
    /// `--part bootstrap`: the app's address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub upstream: Option<String>,
    /// `--part bootstrap`: Envoy's admin address [default: 127.0.0.1:9901].
    #[arg(long)]
    pub envoy_admin: Option<String>,
}

/// `--part bootstrap` defaults: Envoy's usual example ports.
const DEFAULT_BOOTSTRAP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10000);
const DEFAULT_BOOTSTRAP_UPSTREAM: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_BOOTSTRAP_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

/// Validated generator options.
#[derive(Clone, Debug)]
pub struct JwtAuthnConfig {
    /// One provider each.
    pub trust_domains: Vec<TrustDomain>,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// The JWKS endpoint.
    pub jwks_address: SocketAddr,
    /// Its cluster name.
    pub jwks_cluster: String,
    /// `remote_jwks.cache_duration`.
    pub cache_duration: Duration,
    /// RBAC allow-list (empty: no RBAC filter).
    pub allow_spiffe_ids: Vec<SpiffeId>,
    /// What RBAC checks.
    pub principal: Principal,
    /// `--part bootstrap`: listener, app and Envoy admin addresses.
    pub bootstrap: BootstrapAddrs,
    /// `--ecds`: where the config comes from (`None`: the JWKS mode).
    pub ecds: Option<EcdsSource>,
}

/// The ECDS mode's side of Envoy: the bridge it asks and the deny-all default.
#[derive(Clone, Debug)]
pub struct EcdsSource {
    /// The bridge's listen address.
    pub bridge: Listen,
    /// Its cluster name.
    pub cluster: String,
    /// The JWKS of the default config's one key, whose private half nobody has.
    pub deny_all_jwks: String,
}

/// Where a printed bootstrap listens and forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootstrapAddrs {
    /// The listener.
    pub listen: SocketAddr,
    /// The app.
    pub upstream: SocketAddr,
    /// Envoy's admin.
    pub admin: SocketAddr,
}

impl JwtAuthnConfig {
    /// Validates `args`; errors name the flag and the bad value.
    pub fn from_args(args: &JwtAuthnArgs) -> Result<Self, ConfigError> {
        let mut trust_domains = Vec::new();
        for td in &args.trust_domains {
            let parsed: TrustDomain = td.parse().map_err(|e| {
                ConfigError::new("--trust-domain", td, format!("not a trust domain: {e}"))
            })?;
            if !trust_domains.contains(&parsed) {
                trust_domains.push(parsed);
            }
        }
        if let Some(a) = args.audiences.iter().find(|a| a.trim().is_empty()) {
            return Err(ConfigError::new("--audience", a, "empty audience"));
        }
        let jwks_address = match &args.jwks_address {
            Some(v) => config::socket_addr("--jwks-address", v)?,
            None => DEFAULT_JWKS_ADDRESS,
        };
        let jwks_cluster = args
            .jwks_cluster
            .clone()
            .unwrap_or_else(|| DEFAULT_JWKS_CLUSTER.to_owned());
        check_cluster_name("--jwks-cluster", &jwks_cluster)?;
        if !args.ecds
            && let Some((flag, value)) = [
                ("--bridge-address", &args.bridge_address),
                ("--bridge-cluster", &args.bridge_cluster),
            ]
            .into_iter()
            .find_map(|(f, v)| v.as_ref().map(|v| (f, v)))
        {
            return Err(ConfigError::new(flag, value, "only with --ecds"));
        }
        let ecds = if args.ecds {
            let cluster = args
                .bridge_cluster
                .clone()
                .unwrap_or_else(|| DEFAULT_BRIDGE_CLUSTER.to_owned());
            check_cluster_name("--bridge-cluster", &cluster)?;
            let bridge = config::listen(
                "--bridge-address",
                args.bridge_address
                    .as_deref()
                    .unwrap_or(crate::config::DEFAULT_LISTEN),
            )?;
            let deny_all_jwks = crate::jwks::tombstone()
                .map_err(|e| ConfigError::new("--ecds", "", e.to_string()))?
                .body
                .to_string();
            Some(EcdsSource {
                bridge,
                cluster,
                deny_all_jwks,
            })
        } else {
            None
        };
        let cache_duration = match &args.cache_duration {
            Some(v) => config::duration("--cache-duration", v)?,
            None => DEFAULT_CACHE_DURATION,
        };
        if cache_duration < MIN_CACHE_DURATION || cache_duration.subsec_nanos() != 0 {
            return Err(ConfigError::new(
                "--cache-duration",
                args.cache_duration.as_deref().unwrap_or_default(),
                "expected whole seconds, at least 6s (Envoy refetches 5 s before the end)",
            ));
        }
        let mut allow_spiffe_ids = Vec::new();
        for id in &args.allow_spiffe_ids {
            let parsed: SpiffeId = id.parse().map_err(|e| {
                ConfigError::new("--allow-spiffe-id", id, format!("not a SPIFFE ID: {e}"))
            })?;
            // A JWT-SVID's `sub` and an X.509-SVID's URI always have a path, and the provider's
            // `subjects` prefix is `spiffe://<td>/`: an ID without one would be an exact match
            // nothing passes, refusing every request with 403.
            if parsed.path().is_empty() {
                return Err(ConfigError::new(
                    "--allow-spiffe-id",
                    id,
                    "names a trust domain, not a workload: SVIDs always have a path, so no token could match (--trust-domain accepts a whole trust domain)",
                ));
            }
            if args.principal == Principal::Jwt
                && !args.ecds
                && !trust_domains.contains(parsed.trust_domain())
            {
                return Err(ConfigError::new(
                    "--allow-spiffe-id",
                    id,
                    "its trust domain is not one of --trust-domain: no token could match",
                ));
            }
            allow_spiffe_ids.push(parsed);
        }
        let addr = |flag: &str, v: &Option<String>, default| match v {
            Some(v) => config::socket_addr(flag, v),
            None => Ok(default),
        };
        let bootstrap = BootstrapAddrs {
            listen: addr("--listen", &args.listen, DEFAULT_BOOTSTRAP_LISTEN)?,
            upstream: addr("--upstream", &args.upstream, DEFAULT_BOOTSTRAP_UPSTREAM)?,
            admin: addr("--envoy-admin", &args.envoy_admin, DEFAULT_BOOTSTRAP_ADMIN)?,
        };
        if args.part == Part::Bootstrap && args.principal == Principal::X509 {
            return Err(ConfigError::new(
                "--principal",
                "x509",
                "--part bootstrap prints a plain HTTP listener; an mTLS listener needs its certificates from SDS (see examples/envoy/authz-by-spiffe-id.yaml)",
            ));
        }
        Ok(Self {
            trust_domains,
            audiences: args.audiences.clone(),
            jwks_address,
            jwks_cluster,
            cache_duration,
            allow_spiffe_ids,
            principal: args.principal,
            bootstrap,
            ecds,
        })
    }

    /// The requested part as YAML.
    pub fn render(&self, part: Part) -> String {
        match part {
            Part::All => self.document(),
            Part::Filters => self.http_filters(),
            Part::Cluster => self.cluster(),
            Part::Rbac => self.rbac_filter().unwrap_or_default(),
            Part::LocalReply => self.local_reply_config(),
            Part::Bootstrap => self.bootstrap(),
        }
    }

    /// A complete Envoy bootstrap: admin, one HTTP listener with the connection manager's
    /// `local_reply_config`, the filters and the router to the app, the app and JWKS clusters.
    pub fn bootstrap(&self) -> String {
        let BootstrapAddrs {
            listen,
            upstream,
            admin,
        } = self.bootstrap;
        format!(
            r#"# Generated by `sds-bridge jwt-authn-config --part bootstrap`: run with `envoy -c <file>`.
# Requests to {listen} need `authorization: Bearer <JWT-SVID>` of {tds} for {auds}; the
# app at {upstream} gets them with `{SPIFFE_ID_HEADER}` set and the token removed.
{node}admin:
  address:
    socket_address: {{ address: {admin_ip}, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: {listen_ip}, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app }}
{local_reply}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {up_ip}, port_value: {up_port} }}
{cluster}
"#,
            tds = self.accepted_trust_domains(),
            auds = self.accepted_audiences(),
            admin_ip = admin.ip(),
            admin_port = admin.port(),
            listen_ip = listen.ip(),
            listen_port = listen.port(),
            up_ip = upstream.ip(),
            up_port = upstream.port(),
            local_reply = indent(&self.local_reply_config(), 10),
            filters = indent(&self.http_filters(), 10),
            cluster = indent(&self.cluster(), 2),
            node = match &self.ecds {
                // xDS needs a node; the bridge logs its id.
                Some(_) => "node: { id: envoy, cluster: envoy }\n",
                None => "",
            },
        )
    }

    /// `local_reply_config:`, `http_filters:` and `clusters:` with a header comment.
    pub fn document(&self) -> String {
        format!(
            "# Generated by `sds-bridge jwt-authn-config` for trust domains {tds}.\n\
             # Put local_reply_config and the filters (before envoy.filters.http.router) in the\n\
             # listener's http_connection_manager, and the cluster in static_resources.clusters.\n\
             {local_reply}\nhttp_filters:\n{filters}\nclusters:\n{cluster}\n",
            tds = self.accepted_trust_domains(),
            local_reply = self.local_reply_config(),
            filters = self.http_filters(),
            cluster = self.cluster(),
        )
    }

    /// The HCM's `local_reply_config` (a column-0 mapping entry): `jwt_authn`'s wrong-audience
    /// 403 becomes 401, body and `www-authenticate` kept; RBAC's 403 is untouched.
    pub fn local_reply_config(&self) -> String {
        format!(
            r#"local_reply_config:
  mappers:
  - filter:
      extension_filter:
        name: envoy.access_loggers.extension_filters.cel
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter
          expression: {expression}
    status_code: 401"#,
            expression = q(&format!(
                "response.code_details == '{AUDIENCE_DENIED_DETAILS}'"
            )),
        )
    }

    /// The HTTP filters (column-0 list items): strip `x-spiffe-id`, `jwt_authn`, then RBAC if
    /// IDs are listed.
    pub fn http_filters(&self) -> String {
        let mut out = format!(
            r#"- name: envoy.filters.http.header_mutation
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    mutations:
      request_mutations:
      - remove: {SPIFFE_ID_HEADER}
{}"#,
            self.jwt_authn_filter()
        );
        if let Some(rbac) = self.rbac_filter() {
            out.push('\n');
            out.push_str(&rbac);
        }
        out
    }

    /// For comments: which trust domains' tokens are accepted.
    fn accepted_trust_domains(&self) -> String {
        match self.ecds {
            Some(_) => "the bridge's --ecds-trust-domain".to_owned(),
            None => self
                .trust_domains
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// For comments: which audiences are accepted.
    fn accepted_audiences(&self) -> String {
        match self.ecds {
            Some(_) => "the bridge's --ecds-audience".to_owned(),
            None => self.audiences.join(", "),
        }
    }

    /// The cluster the filters need: the bridge's (ECDS) or the JWKS endpoint's.
    pub fn cluster(&self) -> String {
        match &self.ecds {
            Some(ecds) => bridge_cluster(ecds),
            None => self.jwks_cluster(),
        }
    }

    fn jwt_authn_filter(&self) -> String {
        if let Some(ecds) = &self.ecds {
            return ecds_filter(ecds);
        }
        let audiences = list(&self.audiences);
        let providers: String = self
            .trust_domains
            .iter()
            .map(|td| {
                format!(
                    r#"      {name}:
        audiences: {audiences}
        subjects: {{ prefix: {prefix} }}
        require_expiration: true
        clock_skew_seconds: 1
        remote_jwks:
          http_uri:
            uri: {uri}
            cluster: {cluster}
            timeout: 1s
          cache_duration: {cache}s
          async_fetch: {{ failed_refetch_duration: 1s }}
        from_headers:
        - name: authorization
          value_prefix: "Bearer "
        forward: false
        claim_to_headers:
        - header_name: {SPIFFE_ID_HEADER}
          claim_name: sub
        payload_in_metadata: {PAYLOAD_METADATA_KEY}
"#,
                    name = q(&provider_name(td)),
                    prefix = q(&format!("spiffe://{td}/")),
                    uri = q(&format!("http://{}/jwks/{td}", self.jwks_address)),
                    cluster = self.jwks_cluster,
                    cache = self.cache_duration.as_secs(),
                )
            })
            .collect();
        let requires = match self.trust_domains.as_slice() {
            [one] => format!("        provider_name: {}", q(&provider_name(one))),
            many => format!(
                "        requires_any:\n          requirements:\n{}",
                many.iter()
                    .map(|td| format!("          - provider_name: {}", q(&provider_name(td))))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        format!(
            r#"- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
{providers}    rules:
    - match: {{ prefix: "/" }}
      requires:
{requires}"#
        )
    }

    /// The RBAC filter allowing only the listed IDs, `None` when none are listed.
    pub fn rbac_filter(&self) -> Option<String> {
        if self.allow_spiffe_ids.is_empty() {
            return None;
        }
        let principals: String = self
            .allow_spiffe_ids
            .iter()
            .map(|id| match self.principal {
                // `sourced_metadata` (dynamic metadata by default): `metadata` is deprecated.
                Principal::Jwt => format!(
                    r#"          - sourced_metadata:
              metadata_matcher:
                filter: envoy.filters.http.jwt_authn
                path: [{{ key: {PAYLOAD_METADATA_KEY} }}, {{ key: sub }}]
                value: {{ string_match: {{ exact: {id} }} }}
"#,
                    id = q(&id.to_string())
                ),
                Principal::X509 => format!(
                    "          - authenticated: {{ principal_name: {{ exact: {} }} }}\n",
                    q(&id.to_string())
                ),
            })
            .collect();
        Some(format!(
            r#"- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: ALLOW
      policies:
        allowed-spiffe-ids:
          permissions: [{{ any: true }}]
          principals:
{}"#,
            principals.trim_end()
        ))
    }

    /// The JWKS cluster (column-0 list item).
    pub fn jwks_cluster(&self) -> String {
        format!(
            r#"- name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{ address: {ip}, port_value: {port} }}"#,
            name = self.jwks_cluster,
            ip = self.jwks_address.ip(),
            port = self.jwks_address.port(),
        )
    }
}

/// The ECDS mode's `jwt_authn`: named after the resource the bridge serves (Envoy asks for
/// the filter's name), config from the bridge. The listener warms until the first push, so
/// Envoy turns live (and ready) only once it checks tokens with the real keys: serving the
/// default at once instead (`apply_default_config_without_warming`) answered 401 to a live,
/// just restarted Envoy's first requests in one run of eight. If the bridge has not answered
/// by the config source's `initial_fetch_timeout` (15 s), Envoy goes on with the default,
/// which refuses every request with 401: one provider whose only key nobody can sign with.
fn ecds_filter(ecds: &EcdsSource) -> String {
    format!(
        r#"- name: {name}
  config_discovery:
    config_source:
      resource_api_version: V3
      api_config_source:
        api_type: GRPC
        transport_api_version: V3
        grpc_services:
        - envoy_grpc: {{ cluster_name: {cluster} }}
    default_config:
      "@type": {type_url}
      providers:
        {deny}:
          local_jwks: {{ inline_string: {jwks} }}
          from_headers:
          - name: authorization
            value_prefix: "Bearer "
      rules:
      - match: {{ prefix: "/" }}
        requires: {{ provider_name: {deny} }}
    type_urls: [{type_url}]"#,
        name = crate::ecds::RESOURCE_NAME,
        cluster = ecds.cluster,
        type_url = crate::ecds::JWT_AUTHN_TYPE_URL,
        deny = q(DENY_ALL_PROVIDER),
        jwks = q(&ecds.deny_all_jwks),
    )
}

/// The bridge's cluster (column-0 list item): HTTP/2 for gRPC, over its Unix socket or TCP.
fn bridge_cluster(ecds: &EcdsSource) -> String {
    let address = match &ecds.bridge {
        Listen::Unix(path) => format!("pipe: {{ path: {} }}", q(&path.display().to_string())),
        Listen::Tcp(addr) => format!(
            "socket_address: {{ address: {}, port_value: {} }}",
            addr.ip(),
            addr.port()
        ),
    };
    format!(
        r#"- name: {name}
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options: {{}}
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            {address}"#,
        name = ecds.cluster,
    )
}

fn check_cluster_name(flag: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(ConfigError::new(
            flag,
            name,
            "expected letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

/// The provider's name: the trust domain itself, readable in Envoy's logs and stats.
pub(crate) fn provider_name(td: &TrustDomain) -> String {
    td.to_string()
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `text` with every line indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> JwtAuthnArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: JwtAuthnArgs,
        }
        Wrap::try_parse_from(std::iter::once("x").chain(extra.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn one_provider_per_trust_domain_with_its_own_jwks_and_subject_prefix() {
        let c = JwtAuthnConfig::from_args(&args(&[
            "--trust-domain",
            "example.org",
            "--trust-domain",
            "partner.org",
            "--audience",
            "spiffe://example.org/backend",
        ]))
        .unwrap();
        let f = c.http_filters();
        for td in ["example.org", "partner.org"] {
            assert!(f.contains(&format!("prefix: \"spiffe://{td}/\"")), "{f}");
            assert!(
                f.contains(&format!("uri: \"http://127.0.0.1:9013/jwks/{td}\"")),
                "{f}"
            );
            assert!(f.contains(&format!("- provider_name: \"{td}\"")), "{f}");
        }
        assert!(f.contains("requires_any"));
        assert!(
            f.find("remove: x-spiffe-id") < f.find("jwt_authn"),
            "strip first"
        );
        assert!(!f.contains("envoy.filters.http.rbac"));
        assert!(c.document().contains("clusters:\n- name: sds_bridge_jwks"));
        let local_reply = c.render(Part::LocalReply);
        assert!(
            local_reply.starts_with("local_reply_config:\n")
                && local_reply.contains(
                    "\"response.code_details == 'jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}'\""
                )
                && local_reply.contains("status_code: 401"),
            "{local_reply}"
        );
        assert!(c.document().contains(&local_reply));
    }

    #[test]
    fn one_trust_domain_needs_no_requires_any_and_rbac_follows_the_principal() {
        let c = JwtAuthnConfig::from_args(&args(&[
            "--trust-domain",
            "example.org",
            "--audience",
            "a",
            "--allow-spiffe-id",
            "spiffe://example.org/client",
        ]))
        .unwrap();
        let f = c.http_filters();
        assert!(!f.contains("requires_any") && f.contains("provider_name: \"example.org\""));
        assert!(
            f.contains("key: jwt_payload") && f.contains("exact: \"spiffe://example.org/client\"")
        );
        let x = JwtAuthnConfig::from_args(&args(&[
            "--trust-domain",
            "example.org",
            "--audience",
            "a",
            "--allow-spiffe-id",
            "spiffe://example.org/client",
            "--principal",
            "x509",
        ]))
        .unwrap();
        assert!(
            x.rbac_filter()
                .unwrap()
                .contains("authenticated: { principal_name")
        );
    }

    #[test]
    fn ecds_mode_points_the_filter_at_the_bridge_with_a_deny_all_default() {
        let c = JwtAuthnConfig::from_args(&args(&[
            "--ecds",
            "--bridge-address",
            "unix:///run/sds.sock",
        ]))
        .unwrap();
        let f = c.http_filters();
        assert!(
            f.find("remove: x-spiffe-id") < f.find("name: spiffe-jwt-authn"),
            "{f}"
        );
        assert!(
            f.contains("envoy_grpc: { cluster_name: sds_bridge }"),
            "{f}"
        );
        assert!(
            f.contains("default_config:") && f.contains("sds-bridge-no-bundle"),
            "{f}"
        );
        assert!(!f.contains("remote_jwks"), "{f}");
        let cluster = c.render(Part::Cluster);
        assert!(
            cluster.contains("pipe: { path: \"/run/sds.sock\" }")
                && cluster.contains("http2_protocol_options"),
            "{cluster}"
        );
        assert!(c.document().contains(&c.local_reply_config()));
        assert!(c.bootstrap().contains("node: { id: envoy"));
        // The JWKS mode's flags make no sense here.
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            _args: JwtAuthnArgs,
        }
        assert!(Wrap::try_parse_from(["x", "--ecds", "--audience", "a"]).is_err());
        let e = JwtAuthnConfig::from_args(&args(&[
            "--bridge-cluster",
            "b",
            "--audience",
            "a",
            "--trust-domain",
            "t.org",
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "--bridge-cluster");
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (flags, setting) in [
            (
                &["--trust-domain", "Not A TD", "--audience", "a"][..],
                "--trust-domain",
            ),
            (
                &[
                    "--trust-domain",
                    "example.org",
                    "--audience",
                    "a",
                    "--cache-duration",
                    "5s",
                ],
                "--cache-duration",
            ),
            (
                &[
                    "--trust-domain",
                    "example.org",
                    "--audience",
                    "a",
                    "--jwks-address",
                    "localhost:1",
                ],
                "--jwks-address",
            ),
            (
                &[
                    "--trust-domain",
                    "example.org",
                    "--audience",
                    "a",
                    "--allow-spiffe-id",
                    "spiffe://other.org/x",
                ],
                "--allow-spiffe-id",
            ),
        ] {
            let e = JwtAuthnConfig::from_args(&args(flags)).unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
        }
        // The trust domain's own ID, for either principal (`…/` is refused by the parser).
        let id = "spiffe://example.org";
        for principal in ["jwt", "x509"] {
            let flags = [
                "--trust-domain",
                "example.org",
                "--audience",
                "a",
                "--principal",
                principal,
                "--allow-spiffe-id",
                id,
            ];
            let e = JwtAuthnConfig::from_args(&args(&flags)).unwrap_err();
            assert_eq!(e.setting, "--allow-spiffe-id", "{principal}: {e}");
            assert!(e.to_string().contains("no token could match"), "{e}");
        }
    }
}
