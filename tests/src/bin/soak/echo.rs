//! The echo upstream behind the server Envoy.

use std::net::SocketAddr;

/// An HTTP/1.1 server answering `{"spiffe_id", "cert_not_after"}`: the `x-spiffe-id`
/// `jwt_authn` set and the `notAfter` (Unix seconds) of the client certificate in
/// `x-forwarded-client-cert`. Keeps nothing per request, so it can run for hours.
pub(crate) fn start() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
                let get = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let not_after = cert_not_after(&get("x-forwarded-client-cert"));
                axum::Json(serde_json::json!({
                    "spiffe_id": get("x-spiffe-id"),
                    "cert_not_after": not_after,
                }))
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

fn cert_not_after(xfcc: &str) -> Option<i64> {
    let der = suite_tests::sds::xfcc_cert_der(xfcc)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}
