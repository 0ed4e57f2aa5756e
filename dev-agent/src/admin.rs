//! Admin HTTP: `GET /healthz`, `GET /metrics` (Prometheus text), and `POST /rotate/x509`,
//! `POST /rotate/jwt` to force rotations from shell scripts and non-Rust tests, and
//! `POST /retire/jwt` to retire the JWT signing key early (it leaves the bundle at once, as a
//! tainted or revoked SPIRE key does). Revocation after a compromise: `POST /retire/x509`
//! replaces the X.509 CA at once (new CA, SVIDs re-issued, the old CA out of the bundle), and
//! `POST /federation/drop/<trust domain>` stops federating with a partner (its X.509 and JWT
//! bundles leave every stream). These endpoints answer once the new material has been pushed
//! to the streams; with `--state-dir` it is on disk first (see [`crate::state`]), so a restart
//! does not undo a revocation.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{MethodRouter, get, post},
};

use crate::shared::Shared;

/// One admin route. The router and `--help` are both built from [`AdminRoute::ALL`], so the
/// help cannot leave a route out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRoute {
    /// `GET /healthz`.
    Healthz,
    /// `GET /metrics`.
    Metrics,
    /// `POST /rotate/x509`.
    RotateX509,
    /// `POST /rotate/jwt`.
    RotateJwt,
    /// `POST /retire/jwt`.
    RetireJwt,
    /// `POST /retire/x509`.
    RetireX509,
    /// `POST /federation/drop/<trust domain>`.
    DropFederation,
}

impl AdminRoute {
    /// Every endpoint, in the order `--help` lists them.
    pub const ALL: [Self; 7] = [
        Self::Healthz,
        Self::Metrics,
        Self::RotateX509,
        Self::RotateJwt,
        Self::RetireJwt,
        Self::RetireX509,
        Self::DropFederation,
    ];

    /// The method, as `--help` shows it.
    pub fn method(self) -> &'static str {
        match self {
            Self::Healthz | Self::Metrics => "GET",
            _ => "POST",
        }
    }

    /// The route (axum's syntax for the path parameter).
    pub fn path(self) -> &'static str {
        match self {
            Self::Healthz => "/healthz",
            Self::Metrics => "/metrics",
            Self::RotateX509 => "/rotate/x509",
            Self::RotateJwt => "/rotate/jwt",
            Self::RetireJwt => "/retire/jwt",
            Self::RetireX509 => "/retire/x509",
            Self::DropFederation => "/federation/drop/{trust_domain}",
        }
    }

    /// What it does, one line.
    pub fn about(self) -> &'static str {
        match self {
            Self::Healthz => "200 while the agent runs",
            Self::Metrics => "Prometheus text",
            Self::RotateX509 => "re-issue every X.509-SVID now",
            Self::RotateJwt => "rotate the JWT signing key (the old one stays in the bundle)",
            Self::RetireJwt => "retire the JWT signing key now (it leaves the bundle at once)",
            Self::RetireX509 => {
                "replace the X.509 CA now (SVIDs re-issued, old CA out of the bundle)"
            }
            Self::DropFederation => {
                "stop federating with that trust domain (its bundles leave every stream)"
            }
        }
    }

    fn handler(self) -> MethodRouter<Arc<Shared>> {
        match self {
            Self::Healthz => get(|| async { "ok\n" }),
            Self::Metrics => get(metrics),
            Self::RotateX509 => post(rotate_x509),
            Self::RotateJwt => post(rotate_jwt),
            Self::RetireJwt => post(retire_jwt),
            Self::RetireX509 => post(retire_x509),
            Self::DropFederation => post(drop_federation),
        }
    }
}

/// The admin endpoints as `--help` lists them.
pub fn help() -> String {
    let mut text = String::from("Admin endpoints (on --admin-listen):\n");
    for e in AdminRoute::ALL {
        let route = format!(
            "{} {}",
            e.method(),
            e.path().replace("{trust_domain}", "<td>")
        );
        text.push_str(&format!("  {route:<32} {}\n", e.about()));
    }
    text
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    AdminRoute::ALL
        .into_iter()
        .fold(Router::new(), |router, e| {
            router.route(e.path(), e.handler())
        })
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn rotate_x509(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    outcome(shared.rotate_x509().await)
}

async fn rotate_jwt(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    outcome(shared.rotate_jwt_key().await)
}

async fn retire_jwt(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.retire_jwt_key_now().await {
        Ok(kid) => (StatusCode::OK, format!("retired {kid}\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn retire_x509(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.retire_x509_ca_now().await {
        Ok(()) => (StatusCode::OK, "retired the X.509 CA\n".into()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn drop_federation(
    State(shared): State<Arc<Shared>>,
    Path(trust_domain): Path<String>,
) -> (StatusCode, String) {
    let Ok(td) = spiffe::TrustDomain::new(&trust_domain) else {
        return (StatusCode::BAD_REQUEST, "not a trust domain name\n".into());
    };
    match shared.drop_federation(&td).await {
        Ok(true) => (StatusCode::OK, format!("dropped {td}\n")),
        Ok(false) => (StatusCode::NOT_FOUND, format!("{td} is not federated\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn outcome(result: Result<(), crate::Error>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "rotated\n".into()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_route_once() {
        let help = help();
        let mut paths = std::collections::BTreeSet::new();
        for e in AdminRoute::ALL {
            let shown = e.path().replace("{trust_domain}", "<td>");
            assert!(
                help.contains(&format!("{} {shown} ", e.method())),
                "{e:?}:\n{help}"
            );
            assert!(paths.insert(e.path()), "{e:?} twice");
        }
        assert_eq!(help.lines().count(), AdminRoute::ALL.len() + 1);
    }
}
