//! Test support: X.509 snapshots signed by real dev-agent authorities.

use std::collections::HashMap;
use std::time::Duration;

use dev_agent::{Authority, JwtAlg};
use workload_client::X509Context;
use workload_client::spiffe::{SpiffeId, TrustDomain};
use workload_proto::{X509svid, X509svidResponse};

/// A trust domain's authority.
pub(crate) fn authority(td: &str) -> Authority {
    Authority::new(TrustDomain::new(td).unwrap(), JwtAlg::Es256).unwrap()
}

/// A snapshot with one SVID per `ids` (issued by `own`) and `federated` bundles.
pub(crate) fn snapshot(own: &Authority, ids: &[&str], federated: &[&Authority]) -> X509Context {
    let svids = ids
        .iter()
        .map(|id| {
            let id = SpiffeId::new(id).unwrap();
            let issued = own.issue_x509(&id, Duration::from_secs(3600)).unwrap();
            X509svid {
                spiffe_id: id.to_string(),
                x509_svid: issued.cert_der.clone(),
                x509_svid_key: issued.key_pkcs8.expose().to_vec(),
                bundle: own.ca_der().to_vec(),
                hint: String::new(),
            }
        })
        .collect();
    let federated_bundles: HashMap<String, Vec<u8>> = federated
        .iter()
        .map(|a| (a.trust_domain().id_string(), a.ca_der().to_vec()))
        .collect();
    X509Context::from_response(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
    .unwrap()
}
