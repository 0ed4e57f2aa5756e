//! Property tests for settings read from the upstream HCL file (fuzzing on stable Rust): whatever
//! `host` and `port` hold, the helper listens exactly where the file says or refuses to start
//! naming the key, never somewhere else.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::{Cli, Config, DEFAULT_LISTEN, Listen};

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|v| Ipv4Addr::from(v).to_string()),
        any::<u128>().prop_map(|v| Ipv6Addr::from(v).to_string()),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| format!("127.{a}.{b}.{c}")),
        Just("localhost".to_owned()),
        Just("::1".to_owned()),
        "[a-zA-Z0-9.:\\[\\] +-]{0,20}",
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..70_000).prop_map(|p| p.to_string()),
        "[0-9]{1,8}",
        Just("0009010".to_owned()),
    ]
}

proptest! {
    #[test]
    fn the_file_listen_address_is_used_exactly_or_refused_naming_the_key(
        host in prop::option::of(host()),
        port in prop::option::of(port()),
        allow_non_loopback in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.conf");
        let mut text = String::from("audience = \"spiffe://example.org/backend\"\n");
        if let Some(h) = &host {
            text.push_str(&format!("host = \"{h}\"\n"));
        }
        if let Some(p) = &port {
            text.push_str(&format!("port = {p}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            allow_non_loopback_listen: allow_non_loopback,
            admin_listen: Some("off".to_owned()),
            ..Cli::default()
        };
        let env: HashMap<String, String> = HashMap::new();

        let want_ip: Option<IpAddr> = match host.as_deref() {
            None => Some(DEFAULT_LISTEN.ip()),
            Some("localhost") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(h) => h.parse().ok(),
        };
        let want_port: Option<u16> = match port.as_deref() {
            None => Some(DEFAULT_LISTEN.port()),
            Some(p) => p.parse().ok().filter(|p| *p != 0),
        };
        match Config::load(&cli, &env) {
            Ok(config) => {
                let (Some(ip), Some(port)) = (want_ip, want_port) else {
                    return Err(TestCaseError::fail(format!("accepted {text:?}")));
                };
                prop_assert_eq!(config.listen, Listen::Tcp(SocketAddr::new(ip, port)));
                prop_assert!(allow_non_loopback || ip.is_loopback());
            }
            Err(errors) => {
                prop_assert_eq!(errors.0.len(), 1, "{}", errors);
                let e = &errors.0[0];
                let bad_host = want_ip.is_none();
                let bad_port = want_port.is_none();
                let exposed = want_ip.is_some_and(|ip| !ip.is_loopback()) && !allow_non_loopback;
                prop_assert!(bad_host || bad_port || exposed, "refused {text:?}: {e}");
                if bad_host {
                    prop_assert!(e.setting.starts_with("host in "), "{e}");
                } else if bad_port {
                    prop_assert!(e.setting.starts_with("port in "), "{e}");
                } else {
                    prop_assert!(e.setting.starts_with("host in "), "{e}");
                }
            }
        }
    }
}
