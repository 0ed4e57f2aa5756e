//! Property tests for the AWS routes behind the shared guards (fuzzing on stable Rust): the
//! container credentials `Authorization` check and path routing, for any header and path.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use proptest::prelude::*;

use super::{CONTAINER_CREDS_PATH, CREDS_PATH, route_label, router};
use crate::http::props::{NO_WAIT, guarded, refusing_cache, send};
use crate::http::{Broker, error};
use crate::secret::Secret;
use crate::token::{HeaderToken, TokenCheck};

const TOKEN: &str = "s3cr3t-container-token";

/// With and without a container-credentials token.
static APPS: LazyLock<(Router, Router)> = LazyLock::new(|| {
    let app = |token: Option<TokenCheck>| {
        let broker = Broker::new(refusing_cache(), NO_WAIT, error);
        guarded(router(broker, token), route_label, error)
    };
    let check = TokenCheck::new(&HeaderToken::Value(Secret::new(TOKEN))).unwrap();
    (app(Some(check)), app(None))
});

/// An `Authorization` value: the token, near misses of it, or anything a header may hold.
fn authorization() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![
        2 => Just(TOKEN.as_bytes().to_vec()),
        1 => prop::sample::select(vec![
            format!("Bearer {TOKEN}"), format!("{TOKEN} "), TOKEN.to_uppercase(),
            TOKEN[..TOKEN.len() - 1].to_owned(), format!("{TOKEN}x"), String::new(),
        ]).prop_map(String::into_bytes),
        1 => prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40),
    ])
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(CONTAINER_CREDS_PATH.to_owned()),
        1 => Just(CREDS_PATH.to_owned()),
        1 => prop::sample::select(vec!["/v1/creds/", "/V1/creds", "/v1/container-creds/x", "/", "/v1"])
            .prop_map(str::to_owned),
        1 => "(/[a-zA-Z0-9._~-]{0,8}){1,3}",
    ]
}

proptest! {
    #[test]
    fn container_credentials_need_exactly_the_token(
        auth in authorization(),
        path in path(),
        with_token in any::<bool>(),
        query in prop::option::of("[a-z=&]{0,10}"),
    ) {
        let (with, without) = &*APPS;
        let app = if with_token { with } else { without };
        let uri = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let mut request = Request::get(&uri).header(header::HOST, "127.0.0.1:9876");
        if let Some(a) = &auth {
            request = request.header(header::AUTHORIZATION, HeaderValue::from_bytes(a).unwrap());
        }
        let (status, _, body) = send(app, request.body(Body::empty()).unwrap());

        let want = match path.as_str() {
            CREDS_PATH => StatusCode::SERVICE_UNAVAILABLE,
            CONTAINER_CREDS_PATH if !with_token => StatusCode::NOT_FOUND,
            CONTAINER_CREDS_PATH => match &auth {
                None => StatusCode::UNAUTHORIZED,
                Some(a) if a == TOKEN.as_bytes() => StatusCode::SERVICE_UNAVAILABLE,
                Some(_) => StatusCode::FORBIDDEN,
            },
            _ => StatusCode::NOT_FOUND,
        };
        prop_assert_eq!(status, want, "{} {:?}", uri, auth);
        // Every refusal is the broker's JSON error, never a partial document.
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert!(json["error"].is_string() && json["message"].is_string(), "{json}");
        prop_assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
    }
}
