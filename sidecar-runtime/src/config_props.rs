//! Property tests for the listen and socket settings every sidecar parses (fuzzing on stable
//! Rust). Cases come from `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;

use super::{Listen, admin_listen, duration, listen, socket_addr, socket_mode};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (
            any::<u128>(),
            any::<u16>(),
            prop_oneof![Just(0u32), any::<u32>()]
        )
            .prop_map(|(ip, port, scope)| SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                scope
            ))),
    ]
}

fn path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec("[^/?#\u{0}]{1,12}", 1..5)
        .prop_map(|segs| PathBuf::from(format!("/{}", segs.join("/"))))
}

proptest! {
    #[test]
    fn listen_addresses_round_trip_through_display(listen_at in prop_oneof![
        addr().prop_map(Listen::Tcp),
        path().prop_map(Listen::Unix),
    ]) {
        let text = listen_at.to_string();
        prop_assert_eq!(listen("--listen", &text), Ok(listen_at.clone()));
        if let Listen::Tcp(SocketAddr::V4(v4)) = listen_at {
            // `tcp://` is the same address (the Workload API form; it refuses port 0).
            if v4.port() != 0 {
                prop_assert_eq!(listen("--listen", &format!("tcp://{v4}")), Ok(listen_at));
            }
        }
    }

    #[test]
    fn listen_refuses_with_the_setting_named_or_returns_what_was_written(
        value in prop_oneof![
            "(?s).{0,200}",
            "(unix|tcp|UNIX)?(:|://|:///)?[a-z0-9./:\\[\\]?#@+-]{0,30}",
        ]
    ) {
        match listen("SOME_LISTEN", &value) {
            Ok(Listen::Tcp(a)) => {
                let bare = value.strip_prefix("tcp://").or_else(|| value.strip_prefix("TCP://"));
                prop_assert!(
                    value.parse::<SocketAddr>() == Ok(a)
                        || bare.is_some_and(|b| b.ends_with(&a.port().to_string())),
                    "{value:?} -> {a}"
                );
            }
            Ok(Listen::Unix(p)) => {
                prop_assert!(p.is_absolute());
                prop_assert!(value.ends_with(p.to_str().unwrap_or_default()), "{value:?}");
            }
            Err(e) => {
                prop_assert_eq!(&e.setting, "SOME_LISTEN");
                prop_assert_eq!(&e.value, &value);
            }
        }
    }

    #[test]
    fn socket_and_admin_addresses_round_trip(a in addr()) {
        prop_assert_eq!(socket_addr("--x", &a.to_string()), Ok(a));
        prop_assert_eq!(admin_listen("--x", &a.to_string()), Ok(Some(a)));
        prop_assert_eq!(admin_listen("--x", "OFF"), Ok(None));
    }

    #[test]
    fn socket_modes_round_trip_and_nothing_else_is_taken(
        mode in 0u32..=0o777,
        junk in prop_oneof!["[+-]?(0o)?[+-]?[0-7]{1,4}", "[+0-9o x-]{0,6}"],
    ) {
        let accepted = mode & 0o600 == 0o600;
        for text in [format!("{mode:o}"), format!("{mode:04o}"), format!("0o{mode:o}")] {
            prop_assert_eq!(socket_mode("--socket-mode", &text).ok(), accepted.then_some(mode), "{}", text);
        }
        // Anything accepted is octal digits (after an optional 0o), nothing a number parser
        // would also take (a sign, say).
        if let Ok(m) = socket_mode("--socket-mode", &junk) {
            let digits = junk.strip_prefix("0o").unwrap_or(&junk);
            prop_assert!(!digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)), "{junk:?} -> {m:o}");
        }
    }

    #[test]
    fn durations_round_trip_through_humantime(ms in 0u64..10_000_000_000) {
        let d = Duration::from_millis(ms);
        let text = humantime::format_duration(d).to_string();
        prop_assert_eq!(duration("--wait", &text), Ok(d));
    }
}
