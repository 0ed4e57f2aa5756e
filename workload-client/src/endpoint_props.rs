//! Property tests for [`Endpoint::parse`] (fuzzing on stable Rust). Cases come from
//! `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use proptest::prelude::*;

use super::{Endpoint, EndpointError};

/// Inputs are capped at this many bytes: parsing is linear, so the cap bounds each case's time.
const MAX_INPUT: usize = 512;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// An absolute path with at least one non-`/` character and no `?` or `#`.
fn unix_path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec("[^/?#\u{0}]{1,12}", 1..6)
        .prop_flat_map(|segs| (Just(segs), any::<bool>()))
        .prop_map(|(segs, trailing)| {
            let mut p = format!("/{}", segs.join("/"));
            if trailing {
                p.push('/');
            }
            PathBuf::from(p)
        })
}

/// Near misses: pieces of valid addresses glued in plausible and implausible ways, and valid
/// addresses with one part replaced by what a number or IP parser might also take.
fn near_miss() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "unix", "UNIX", "tcp", "TCP", "Tcp", "http", "", "unix ", "tcp6",
    ]);
    let sep = prop::sample::select(vec![":", "://", ":/", ":///", "//", ":////", ""]);
    let host = prop_oneof![
        ip().prop_map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        }),
        ip().prop_map(|ip| ip.to_string()),
        Just("localhost".to_owned()),
        Just("user@127.0.0.1".to_owned()),
        Just(String::new()),
        "[a-z0-9.:\\[\\]%]{0,20}",
    ];
    let port = prop_oneof![
        (1u16..=u16::MAX).prop_map(|p| format!(":{p}")),
        "(:[+-]?[0-9]{0,7})?",
        Just(":http".to_owned()),
    ];
    let tail = "(/[a-z.]{0,8})?([?#][a-z=]{0,4})?";
    let glued =
        (scheme, sep, host, port, tail).prop_map(|(s, sep, h, p, t)| format!("{s}{sep}{h}{p}{t}"));
    let odd_port = (
        ip(),
        prop_oneof![
            "[+-][0-9]{1,5}",
            "0[0-9]{1,6}",
            "[0-9]{1,5}[ a-z_]",
            " [0-9]{1,5}",
            "[0-9_]{1,6}"
        ],
    )
        .prop_map(|(ip, port)| match ip {
            IpAddr::V4(v4) => format!("tcp://{v4}:{port}"),
            IpAddr::V6(v6) => format!("tcp://[{v6}]:{port}"),
        });
    let odd_host = (
        prop_oneof![
            "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}",
            "0x[0-9a-f]{1,8}",
            "\\[[0-9a-f:.%]{0,20}\\]",
            "[0-9a-f:]{0,20}",
        ],
        1u16..=u16::MAX,
    )
        .prop_map(|(host, port)| format!("tcp://{host}:{port}"));
    prop_oneof![2 => glued, 1 => odd_port, 1 => odd_host]
}

/// What every result must satisfy, whatever the input: Ok only for what the address grammar
/// (`docs/protocols.md#workload-api-endpoint`) allows, and an error whose text stays proportional
/// to the input.
fn check_any(input: &str) -> Result<(), TestCaseError> {
    match Endpoint::parse(input) {
        Ok(Endpoint::Unix(path)) => {
            let path = path.to_str().unwrap_or_default();
            prop_assert!(path.starts_with('/'), "{input:?} gave relative {path:?}");
            prop_assert!(
                !path.trim_matches('/').is_empty(),
                "{input:?} gave empty path"
            );
            prop_assert!(input.ends_with(path), "{input:?} gave {path:?}");
            prop_assert!(!input.contains(['?', '#']), "{input:?}");
            prop_assert!(
                input.to_ascii_lowercase().starts_with("unix:"),
                "{input:?} is not a unix: address"
            );
        }
        Ok(Endpoint::Tcp(addr)) => {
            prop_assert!(addr.port() != 0);
            let lower = input.to_ascii_lowercase();
            prop_assert!(lower.starts_with("tcp://"), "{input:?}");
            // The port is decimal digits only (RFC 3986 §3.2.3), nothing a number parser
            // would also take (a sign, say).
            let (_, port) = input.rsplit_once(':').unwrap_or_default();
            prop_assert!(
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
                "{input:?} accepted with port text {port:?}"
            );
            prop_assert_eq!(port.parse::<u16>().ok(), Some(addr.port()));
            prop_assert!(!input.contains(['?', '#', '@']), "{input:?}");
        }
        Err(e) => {
            // `{:?}` escapes at most ~10 bytes per character, plus the fixed text.
            let text = e.to_string();
            prop_assert!(text.len() <= 10 * input.len() + 128, "{} bytes", text.len());
            if input.is_empty() {
                prop_assert_eq!(e, EndpointError::Empty);
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn unix_endpoints_round_trip_through_display(path in unix_path(), short in any::<bool>()) {
        let endpoint = Endpoint::Unix(path.clone());
        let text = endpoint.to_string();
        prop_assert_eq!(Endpoint::parse(&text), Ok(endpoint.clone()));
        // `unix:/path` is the same address.
        if short {
            let short = format!("unix:{}", path.display());
            prop_assert_eq!(Endpoint::parse(&short), Ok(endpoint));
        }
    }

    #[test]
    fn tcp_endpoints_round_trip_through_display(ip in ip(), port in 1u16..=u16::MAX) {
        let endpoint = Endpoint::Tcp(SocketAddr::new(ip, port));
        let text = endpoint.to_string();
        prop_assert_eq!(Endpoint::parse(&text), Ok(endpoint.clone()));
        // Scheme and IPv6 hex digits are case-insensitive.
        prop_assert_eq!(Endpoint::parse(&text.to_ascii_uppercase()), Ok(endpoint));
    }

    #[test]
    fn near_misses_parse_only_to_what_they_say(input in near_miss()) {
        check_any(&input)?;
    }

    #[test]
    fn arbitrary_text_never_panics_and_is_refused_or_well_formed(
        input in prop::string::string_regex(&format!("(?s).{{0,{MAX_INPUT}}}")).unwrap()
    ) {
        check_any(&input)?;
    }
}
