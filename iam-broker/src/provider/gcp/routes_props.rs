//! Property tests for the GCE metadata routes (fuzzing on stable Rust): the `Metadata-Flavor` and
//! `X-Forwarded-For` guard, path and query parsing, and [`parse_scopes`], for any request.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use proptest::prelude::*;

use super::{FLAVOR, Routes, render_error, route_label, router};
use crate::cache_set::{CacheSet, SetLimits};
use crate::http::props::{NO_WAIT, guarded, refusing_cache, send};
use crate::provider::gcp::config::{CLOUD_PLATFORM, parse_scopes};

const EMAIL: &str = "broker@project.iam.gserviceaccount.com";
const PREFIX: &str = "/computeMetadata/v1/";
const ACCOUNTS: &str = "instance/service-accounts/";

static APP: LazyLock<Router> = LazyLock::new(|| {
    let routes = Routes {
        tokens: CacheSet::new("scope sets", SetLimits::default(), |_| refusing_cache()),
        fetch_wait: NO_WAIT,
        project_id: "project".into(),
        project_number: "123456789012".into(),
        email: EMAIL.into(),
        scopes: vec![CLOUD_PLATFORM.to_owned()].into(),
        default_key: CLOUD_PLATFORM.into(),
    };
    guarded(router(routes), route_label, render_error)
});

fn scope() -> impl Strategy<Value = String> {
    "https://[a-z0-9.-]{1,20}(/[a-zA-Z0-9._-]{1,12}){0,3}"
}

/// Paths the metadata server answers, near misses of them, and anything else.
fn path() -> impl Strategy<Value = String> {
    let account = prop::sample::select(vec![
        "default",
        EMAIL,
        "other@x.iam.gserviceaccount.com",
        "",
        "Default",
    ]);
    let item = prop::sample::select(vec![
        "", "email", "aliases", "scopes", "token", "identity", "token/", "tok", "email/x",
    ]);
    prop_oneof![
        Just("/".to_owned()),
        prop::sample::select(vec![
            "project/project-id",
            "project/numeric-project-id",
            "instance/service-accounts",
            "instance/service-accounts/",
            "instance/zone",
            "project/"
        ])
        .prop_map(|p| format!("{PREFIX}{p}")),
        (account.clone(), item).prop_map(|(a, i)| format!("{PREFIX}{ACCOUNTS}{a}/{i}")),
        account.prop_map(|a| format!("{PREFIX}{ACCOUNTS}{a}")),
        "(/[a-zA-Z0-9._~-]{0,10}){1,4}",
    ]
}

/// What the metadata server answers for a request that passed the guards.
fn expected(path: &str, query: &str) -> StatusCode {
    if path == "/" {
        return StatusCode::OK;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return StatusCode::NOT_FOUND;
    };
    if [
        "project/project-id",
        "project/numeric-project-id",
        "instance/service-accounts",
        "instance/service-accounts/",
    ]
    .contains(&rest)
    {
        return StatusCode::OK;
    }
    let Some(account_path) = rest.strip_prefix(ACCOUNTS) else {
        return StatusCode::NOT_FOUND;
    };
    let (account, item) = account_path.split_once('/').unwrap_or((account_path, ""));
    if account != "default" && account != EMAIL {
        return StatusCode::NOT_FOUND;
    }
    match item {
        "" | "email" | "aliases" | "scopes" => StatusCode::OK,
        "token" => {
            let asked = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "scopes");
            match asked.map(|(_, v)| parse_scopes(&v)) {
                Some(Err(_)) => StatusCode::BAD_REQUEST,
                Some(Ok(scopes)) if scopes.iter().any(|s| s != CLOUD_PLATFORM) => {
                    StatusCode::FORBIDDEN
                }
                // No credentials ever arrive in these tests.
                _ => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
        _ => StatusCode::NOT_FOUND,
    }
}

proptest! {
    #[test]
    fn scope_lists_parse_to_the_sorted_distinct_scopes(
        scopes in prop::collection::vec(scope(), 1..=16),
        seps in prop::collection::vec(prop::sample::select(vec![",", " ,", ", ", ",,"]), 16),
    ) {
        let mut text = String::new();
        for (i, s) in scopes.iter().enumerate() {
            if i > 0 {
                text.push_str(seps[i]);
            }
            text.push_str(s);
        }
        let mut want = scopes.clone();
        want.sort();
        want.dedup();
        prop_assert_eq!(parse_scopes(&text), Ok(want));
    }

    #[test]
    fn scope_lists_are_refused_past_16_or_with_a_non_url(
        scopes in prop::collection::vec(scope(), 17..24),
        bad in prop_oneof!["http://[a-z.]{1,10}", "[a-z/:.]{1,20}", "https://a b"],
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert!(parse_scopes(&scopes.join(",")).is_err());
        let mut few = scopes[..4].to_vec();
        let i = at.index(few.len());
        few[i] = bad;
        prop_assume!(!few[i].starts_with("https://") || few[i].contains(' '));
        prop_assert!(parse_scopes(&few.join(",")).is_err());
    }

    #[test]
    fn arbitrary_scope_lists_are_valid_or_refused(text in "(?s).{0,400}") {
        if let Ok(scopes) = parse_scopes(&text) {
            prop_assert!(!scopes.is_empty() && scopes.len() <= 16);
            prop_assert!(scopes.windows(2).all(|w| w[0] < w[1]));
            for s in &scopes {
                prop_assert!(s.starts_with("https://") && s.len() <= 256);
                prop_assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b','));
            }
        }
    }

    /// The metadata server's SSRF guard (exactly one `Metadata-Flavor: Google`, no
    /// `X-Forwarded-For`) behind the shared guards, then routing: every answer carries
    /// `Metadata-Flavor: Google`, and nothing but a token request is ever a 5xx.
    #[test]
    fn requests_pass_the_flavor_guard_then_route_as_the_metadata_server(
        flavors in prop::collection::vec(
            prop_oneof![4 => Just("Google"), 1 => Just("google"), 1 => Just("Google "), 1 => Just("")],
            0..3,
        ),
        forwarded in any::<bool>(),
        foreign_host in any::<bool>(),
        post in any::<bool>(),
        path in path(),
        query in prop_oneof![
            Just(String::new()),
            Just("recursive=true".to_owned()),
            scope().prop_map(|s| format!("scopes={s}")),
            prop::collection::vec(scope(), 1..20).prop_map(|s| format!("scopes={}", s.join(","))),
            "scopes=[a-z:/.,%]{0,30}",
        ],
    ) {
        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut request = Request::builder()
            .method(if post { Method::POST } else { Method::GET })
            .uri(&uri)
            .header(header::HOST, if foreign_host { "metadata.google.internal" } else { "127.0.0.1:8080" });
        for f in &flavors {
            request = request.header(FLAVOR, HeaderValue::from_static(f));
        }
        if forwarded {
            request = request.header("x-forwarded-for", "10.0.0.1");
        }
        let (status, headers, _) = send(&APP, request.body(Body::empty()).unwrap());

        let want = if foreign_host {
            StatusCode::FORBIDDEN
        } else if post {
            StatusCode::METHOD_NOT_ALLOWED
        } else if forwarded || flavors != ["Google"] {
            StatusCode::FORBIDDEN
        } else {
            expected(&path, &query)
        };
        prop_assert_eq!(status, want, "{} flavors {:?} xff {}", uri, flavors, forwarded);
        prop_assert_eq!(headers.get(FLAVOR).map(HeaderValue::as_bytes), Some(&b"Google"[..]));
    }
}
