//! Property tests for the guards every provider shares (fuzzing on stable Rust), and the
//! plumbing the providers' route property tests use: a runtime, a provider that never has
//! credentials, and one request through a router. Cases come from `PROPTEST_CASES` (default
//! 256); `cargo xtask fuzz` runs them for longer.

use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::routing::any as any_method;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt as _;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use sidecar_runtime::Readiness;
use tower::ServiceExt as _;

use super::{RenderError, Service, error, is_loopback_host};
use crate::cache::{CacheConfig, CredentialCache};
use crate::metrics::Metrics;
use crate::provider::{CredentialProvider, ErrorKind, Expiring, ProviderError};

// === Shared plumbing ===

/// One runtime for every case: the caches' refresh tasks live on it.
pub(crate) static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
});

/// A provider that never has credentials: a request that gets past every check ends in
/// 502/503 from [`super::cache_error`], so any other status came from a guard or a parser.
struct Refuses<C>(PhantomData<fn() -> C>);

impl<C: Expiring + Send + Sync + 'static> CredentialProvider for Refuses<C> {
    type Credentials = C;
    fn name(&self) -> &'static str {
        "refuses"
    }
    fn fetch(&self) -> BoxFuture<'_, Result<C, ProviderError>> {
        Box::pin(async { Err(ProviderError::new(ErrorKind::Transient, "test: never any")) })
    }
}

/// A cache over [`Refuses`], started on [`RT`].
pub(crate) fn refusing_cache<C: Expiring + Send + Sync + 'static>() -> CredentialCache<C> {
    let _rt = RT.enter();
    CredentialCache::start(Refuses(PhantomData), CacheConfig::default())
}

/// How long a request may wait for credentials in these tests: none.
pub(crate) const NO_WAIT: Duration = Duration::ZERO;

/// `routes` behind the shared guards, as `main` serves them.
pub(crate) fn guarded(
    routes: Router,
    route_label: fn(&str) -> &'static str,
    render_error: RenderError,
) -> Router {
    let service = Service {
        routes,
        route_label,
        render_error,
        ready: Box::new(|| Readiness::Ready),
        options: crate::http::ServiceOptions::default(),
    };
    service
        .into_parts(Metrics::register(&mut Registry::default()))
        .app
}

/// One request through `app`: status, headers, body.
pub(crate) fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    RT.block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    })
}

// === Hosts ===

/// A host (with an optional port) and whether it names loopback.
fn host() -> impl Strategy<Value = (String, bool)> {
    let loopback = prop_oneof![
        "[lL][oO][cC][aA][lL][hH][oO][sS][tT]\\.?",
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| format!("127.{a}.{b}.{c}")),
        prop::sample::select(vec!["[::1]", "[0:0:0:0:0:0:0:1]", "[::0:1]", "[0::1]"])
            .prop_map(str::to_owned),
    ]
    .prop_map(|h| (h, true));
    let foreign = prop_oneof![
        any::<u32>()
            .prop_filter("not 127/8", |v| v >> 24 != 127)
            .prop_map(|v| Ipv4Addr::from(v).to_string()),
        any::<u128>()
            .prop_filter("not ::1", |v| *v != 1)
            .prop_map(|v| format!("[{}]", Ipv6Addr::from(v))),
        prop::sample::select(vec![
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost..",
            "::1",
            "[::ffff:127.0.0.1]",
            "127.0.0.1x",
            "[::1",
            "localhost:",
            "",
            "0.0.0.0",
            "2130706433",
            "0x7f000001",
            "127.1",
            "[::1]]",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9.-]{1,20}".prop_filter("not loopback", |h| !may_be_loopback(h)),
    ]
    .prop_map(|h| (h, false));
    let port = prop_oneof![
        2 => Just((String::new(), true)),
        2 => (0u32..=65535).prop_map(|p| (format!(":{p}"), true)),
        1 => "[0-9]{1,5}".prop_map(|p| (format!(":{p}"), true)),
        1 => prop::sample::select(vec![":", ":+80", ":-1", ": 80", ":123456", ":8o", "::80"])
            .prop_map(|p| (p.to_owned(), false)),
    ];
    (prop_oneof![loopback, foreign], port)
        .prop_map(|((h, h_ok), (p, p_ok))| (format!("{h}{p}"), h_ok && p_ok))
}

/// An independent statement of what [`is_loopback_host`] may accept: `localhost` (with an
/// optional trailing dot, any case), an IPv4 address in 127/8 or `[::1]` in any spelling,
/// then an optional `:` and one to five digits.
fn may_be_loopback(host_port: &str) -> bool {
    let digits = |s: &str| (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let host = match host_port.rfind(':') {
        Some(i) if digits(&host_port[i + 1..]) && !host_port[..i].ends_with(':') => &host_port[..i],
        _ => host_port,
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>() == Ok(Ipv6Addr::LOCALHOST);
    }
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host
            .parse::<Ipv4Addr>()
            .is_ok_and(|ip| ip.octets()[0] == 127)
}

// === The guard layer ===

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        1 => prop::sample::select(vec![
            Method::POST, Method::PUT, Method::HEAD, Method::DELETE, Method::OPTIONS,
            Method::PATCH, Method::CONNECT, Method::TRACE,
        ]),
        1 => "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// A `Host` header value: a host as above, or octets no host has (obs-text, controls h2/
/// hyper would refuse are left out: `HeaderValue` cannot hold them).
fn host_value() -> impl Strategy<Value = (HeaderValue, bool)> {
    prop_oneof![
        4 => host().prop_map(|(h, ok)| (HeaderValue::from_str(&h).unwrap(), ok)),
        1 => prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..20)
            .prop_map(|b| {
                let ok = std::str::from_utf8(&b).is_ok_and(may_be_loopback);
                (HeaderValue::from_bytes(&b).unwrap(), ok)
            }),
    ]
}

proptest! {
    #[test]
    fn loopback_hosts_are_exactly_the_loopback_names_and_addresses((host, loopback) in host()) {
        prop_assert_eq!(is_loopback_host(&host), loopback, "{:?}", host);
    }

    #[test]
    fn nothing_but_a_loopback_host_is_accepted(text in "(?s).{0,64}") {
        if is_loopback_host(&text) {
            prop_assert!(may_be_loopback(&text), "{text:?} accepted");
        }
    }

    /// The guards in front of every provider: one loopback `Host` (or an absolute-form
    /// loopback URI), GET only; each refusal in the provider's error format.
    #[test]
    fn the_guards_pass_exactly_one_loopback_host_and_get(
        method in method(),
        hosts in prop::collection::vec(host_value(), 0..3),
        absolute in prop::option::of(host()),
        path in "(/[a-z0-9._~-]{0,10}){1,3}",
    ) {
        let app = guarded(
            Router::new()
                .route("/{*rest}", any_method(|| async { "routed" }))
                .route("/", any_method(|| async { "routed" })),
            |_| "other",
            error,
        );
        let uri = match &absolute {
            Some((h, _)) => format!("http://{h}{path}"),
            None => path.clone(),
        };
        // An authority `http::Uri` refuses is not a request hyper would hand over.
        let Ok(uri) = uri.parse::<axum::http::Uri>() else {
            return Ok(());
        };
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        for (value, _) in &hosts {
            request = request.header(header::HOST, value.clone());
        }
        let (status, headers, body) = send(&app, request.body(Body::empty()).unwrap());

        // The guard checks the URI's host alone (its port is the listener's business).
        let uri_host_ok = uri.host().map(may_be_loopback);
        let want = if hosts.len() > 1 {
            StatusCode::BAD_REQUEST
        } else if uri_host_ok == Some(false) {
            StatusCode::FORBIDDEN
        } else if let Some((_, ok)) = hosts.first() {
            if *ok { StatusCode::OK } else { StatusCode::FORBIDDEN }
        } else if uri_host_ok == Some(true) {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        let want = if want == StatusCode::OK && method != Method::GET {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            want
        };
        prop_assert_eq!(status, want, "{} {} hosts {:?}", method, uri, hosts);
        if status == StatusCode::OK {
            prop_assert_eq!(&body[..], b"routed");
        } else if method != Method::HEAD {
            // (A HEAD answer has no body.)
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert!(json["error"].is_string() && json["message"].is_string(), "{json}");
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            prop_assert_eq!(headers.get(header::ALLOW).map(HeaderValue::as_bytes), Some(&b"GET"[..]));
        }
    }
}
