//! Property tests for the Azure managed-identity route (fuzzing on stable Rust): [`parse_query`]
//! round trips and rejections, and the `X-IDENTITY-HEADER` check in front of it, for any query.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use proptest::prelude::*;

use super::{
    API_VERSION, IDENTITY_HEADER_NAME, Routes, TOKEN_PATH, parse_query, render_error, route_label,
    router,
};
use crate::cache_set::{CacheSet, SetLimits};
use crate::http::props::{NO_WAIT, guarded, refusing_cache, send};
use crate::provider::azure::config::{MAX_RESOURCE_LEN, check_resource};
use crate::secret::Secret;
use crate::token::{HeaderToken, TokenCheck};

const CID: &str = "0a1b2c3d-0000-0000-0000-000000000001";
const IDENTITY: &str = "identity-header-secret";
/// Error messages quote at most 64 characters of what was sent (escaped: up to 10 bytes each).
const MAX_MESSAGE: usize = 1024;

fn resource() -> impl Strategy<Value = String> {
    prop_oneof![
        "https://[a-z0-9.-]{1,30}(/[a-zA-Z0-9._~%-]{0,10}){0,3}",
        "api://[a-z0-9-]{1,36}",
        Just("https://storage.azure.com/".to_owned()),
    ]
    .prop_filter("a resource the broker takes", |r| check_resource(r).is_ok())
}

/// Parameters MSAL might add that the broker ignores.
fn extra() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            "[a-z_]{1,10}".prop_filter("not a parameter we read", |k| {
                ![
                    "api-version",
                    "resource",
                    "client_id",
                    "object_id",
                    "principal_id",
                    "mi_res_id",
                ]
                .contains(&k.as_str())
            }),
            "(?s).{0,20}",
        ),
        0..3,
    )
}

/// The query, encoded as an SDK would, with the parameters in the given order.
fn encode(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

static APPS: LazyLock<(Router, Router)> = LazyLock::new(|| {
    let app = |allowed: Option<Arc<[String]>>| {
        let routes = Routes {
            tokens: CacheSet::new("resources", SetLimits::default(), |_| refusing_cache()),
            fetch_wait: NO_WAIT,
            identity: Arc::new(
                TokenCheck::new(&HeaderToken::Value(Secret::new(IDENTITY))).unwrap(),
            ),
            allowed,
            client_id: CID.into(),
        };
        guarded(router(routes), route_label, render_error)
    };
    let allowed: Arc<[String]> = vec!["https://storage.azure.com/".to_owned()].into();
    (app(None), app(Some(allowed)))
});

proptest! {
    #[test]
    fn queries_as_sdks_encode_them_give_the_resource(
        resource in resource(),
        client_id in prop::option::of(prop_oneof![Just(CID.to_owned()), Just(CID.to_uppercase())]),
        extra in extra(),
        order in any::<prop::sample::Index>(),
    ) {
        let mut params = vec![
            ("api-version".to_owned(), API_VERSION.to_owned()),
            ("resource".to_owned(), resource.clone()),
        ];
        params.extend(client_id.map(|c| ("client_id".to_owned(), c)));
        params.extend(extra);
        let n = params.len();
        params.rotate_left(order.index(n));
        prop_assert_eq!(parse_query(&encode(&params), CID), Ok(resource));
    }

    #[test]
    fn each_malformed_query_is_refused_with_its_reason(
        resource in resource(),
        other in resource(),
        case in 0usize..6,
        junk in "[a-z0-9.-]{0,12}",
    ) {
        let (params, reason): (Vec<(&str, String)>, &str) = match case {
            0 => (vec![("resource", resource.clone())], "api-version is required"),
            1 => (
                vec![("api-version", format!("{junk}x")), ("resource", resource.clone())],
                "is not supported",
            ),
            2 => (vec![("api-version", API_VERSION.to_owned())], "resource is required"),
            3 => (
                vec![("api-version", API_VERSION.to_owned()), ("resource", resource.clone()), ("resource", other)],
                "more than one resource",
            ),
            4 => (
                vec![("api-version", API_VERSION.to_owned()), ("resource", resource.clone()), ("client_id", format!("{junk}z"))],
                "serves client_id",
            ),
            _ => (
                vec![("api-version", API_VERSION.to_owned()), ("resource", resource.clone()), ("mi_res_id", junk)],
                "is not supported",
            ),
        };
        let params: Vec<(String, String)> =
            params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let e = parse_query(&encode(&params), CID).unwrap_err();
        prop_assert!(e.contains(reason), "{params:?}: {e}");
    }

    #[test]
    fn arbitrary_queries_give_a_valid_resource_or_a_bounded_reason(
        query in prop_oneof![
            "(?s).{0,300}",
            "((api-version|resource|client_id|[a-z]{1,3})=[a-zA-Z0-9%:/.+-]{0,20}&?){0,5}",
        ]
    ) {
        match parse_query(&query, CID) {
            Ok(resource) => {
                prop_assert!(check_resource(&resource).is_ok());
                prop_assert!(resource.len() <= MAX_RESOURCE_LEN);
            }
            Err(message) => prop_assert!(message.len() <= MAX_MESSAGE, "{} bytes", message.len()),
        }
    }

    /// The secret first (401 missing, 403 wrong), then the query (400), then the allow-list
    /// (403); every error in MSAL's `{statusCode, message}` shape.
    #[test]
    fn the_identity_header_is_checked_before_anything_else(
        identity in prop::option::of(prop_oneof![
            3 => Just(IDENTITY.to_owned()),
            1 => Just(format!("{IDENTITY} ")),
            1 => "[ -~]{0,30}",
        ]),
        query in prop_oneof![
            Just(format!("api-version={API_VERSION}&resource=https%3A%2F%2Fstorage.azure.com%2F")),
            Just(format!("api-version={API_VERSION}&resource=https://vault.azure.net")),
            "[a-z=&%-]{0,30}",
        ],
        restricted in any::<bool>(),
    ) {
        let (open, allow_listed) = &*APPS;
        let app = if restricted { allow_listed } else { open };
        let mut request = Request::get(format!("{TOKEN_PATH}?{query}"))
            .header(header::HOST, "localhost:9876");
        if let Some(v) = &identity {
            request = request.header(IDENTITY_HEADER_NAME, HeaderValue::from_str(v).unwrap());
        }
        let (status, _, body) = send(app, request.body(Body::empty()).unwrap());
        let parsed = parse_query(&query, CID);
        let want = match (&identity, &parsed) {
            (None, _) => StatusCode::UNAUTHORIZED,
            (Some(v), _) if v != IDENTITY => StatusCode::FORBIDDEN,
            (_, Err(_)) => StatusCode::BAD_REQUEST,
            (_, Ok(r)) if restricted && r != "https://storage.azure.com/" => StatusCode::FORBIDDEN,
            (_, Ok(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        prop_assert_eq!(status, want, "{:?} {}", identity, query);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(json["statusCode"].as_u64(), Some(u64::from(status.as_u16())));
        prop_assert!(json["message"].is_string());
        prop_assert!(!String::from_utf8_lossy(&body).contains(IDENTITY));
    }
}
