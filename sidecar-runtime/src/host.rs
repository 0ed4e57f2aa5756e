//! `host[:port]` as an HTTP `Host` header or `:authority` carries it (RFC 9110 §7.2,
//! <https://www.rfc-editor.org/rfc/rfc9110#section-7.2>): the one parser behind every
//! host rule of ours — the admin server's DNS-rebinding guard, iam-broker's loopback-only
//! `Host`, and jwt-auth-helper's per-host audiences.
//!
//! Strict on purpose: an IPv6 literal must be bracketed, a port is 1–5 digits, and anything
//! else is not a host. A guard that guessed at malformed input would let a crafted header
//! through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed `host[:port]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host as written: a name, an IPv4 literal, or `[IPv6]` with its brackets.
    pub host: &'a str,
    /// The port's digits, if one was given.
    pub port: Option<&'a str>,
}

// === impl HostPort ===

impl<'a> HostPort<'a> {
    /// Splits `value`; `None` if it is not a host with an optional port (a bare IPv6 literal,
    /// an empty or non-numeric port, text after `]`, an unclosed `[`, or nothing).
    pub fn parse(value: &'a str) -> Option<Self> {
        if value.starts_with('[') {
            let end = value.find(']')?;
            let (host, after) = value.split_at(end + 1);
            host[1..end].parse::<Ipv6Addr>().ok()?;
            return match after {
                "" => Some(Self { host, port: None }),
                _ => {
                    let port = after.strip_prefix(':').filter(|p| is_port(p))?;
                    Some(Self {
                        host,
                        port: Some(port),
                    })
                }
            };
        }
        match value.rsplit_once(':') {
            Some((host, port)) if is_port(port) && !host.is_empty() && !host.contains(':') => {
                Some(Self {
                    host,
                    port: Some(port),
                })
            }
            // A bare IPv6 literal, an empty or non-numeric port.
            Some(_) => None,
            None if value.is_empty() => None,
            None => Some(Self {
                host: value,
                port: None,
            }),
        }
    }

    /// The host if it is an IP literal (IPv4, or bracketed IPv6).
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host.strip_prefix('[') {
            Some(v6) => v6
                .trim_end_matches(']')
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6),
            None => self.host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        }
    }

    /// `localhost`, any case, with or without the root's trailing dot.
    pub fn is_localhost(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.host.eq_ignore_ascii_case("localhost.")
    }

    /// `localhost` or a loopback IP literal (`127.0.0.0/8`, `[::1]`).
    pub fn is_loopback(&self) -> bool {
        self.is_localhost() || self.ip().is_some_and(|ip| ip.is_loopback())
    }

    /// `localhost` or any IP literal: no DNS name a rebinding attack could point here.
    pub fn is_ip_or_localhost(&self) -> bool {
        self.is_localhost() || self.ip().is_some()
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_ipv4_and_bracketed_ipv6() {
        let hp = |h, p| Some(HostPort { host: h, port: p });
        assert_eq!(
            HostPort::parse("api.internal:8443"),
            hp("api.internal", Some("8443"))
        );
        assert_eq!(HostPort::parse("api.internal"), hp("api.internal", None));
        assert_eq!(HostPort::parse("[::1]:80"), hp("[::1]", Some("80")));
        assert_eq!(HostPort::parse("[fd00::7]"), hp("[fd00::7]", None));
        assert_eq!(
            HostPort::parse("127.0.0.1:9012"),
            hp("127.0.0.1", Some("9012"))
        );
        for bad in [
            "",
            "::1",
            "fd00::7",
            "[fd00::7",
            "[::1]x",
            "[::1]:",
            "[nope]",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "h:123456",
            ":80",
        ] {
            assert_eq!(HostPort::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_is_localhost_127_8_and_v6_one() {
        let loopback = |s| HostPort::parse(s).is_some_and(|h| h.is_loopback());
        for ok in [
            "localhost",
            "LOCALHOST:9876",
            "localhost.",
            "127.1.2.3:80",
            "[::1]:9876",
        ] {
            assert!(loopback(ok), "{ok}");
        }
        for bad in [
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]",
            "::1",
        ] {
            assert!(!loopback(bad), "{bad}");
        }
        let ip_or_localhost = |s| HostPort::parse(s).is_some_and(|h| h.is_ip_or_localhost());
        assert!(ip_or_localhost("10.244.1.7:9012") && ip_or_localhost("[fd00::7]:9012"));
        assert!(!ip_or_localhost("10.0.0.1.nip.io:9012"));
    }
}
