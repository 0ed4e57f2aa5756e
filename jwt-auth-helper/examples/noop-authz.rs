//! A no-op ext_authz server built with exactly the helper's stack (tonic, envoy-types, the same
//! server settings) that allows every request: the baseline `cargo xtask bench` compares the
//! helper against, so the figure isolates the helper's own work from gRPC and HTTP/2 costs.
//!
//! usage: noop-authz --listen 127.0.0.1:PORT

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};

#[derive(Debug, Default)]
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let mut response = CheckResponse::new();
        response
            .set_status(tonic::Status::ok(""))
            .set_http_response(OkHttpResponseBuilder::new());
        Ok(tonic::Response::new(response))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr.parse()?,
        _ => return Err("usage: noop-authz --listen IP:PORT".into()),
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(4096))
        .add_service(AuthorizationServer::new(AllowAll))
        .serve(listen)
        .await?;
    Ok(())
}
