//! Which hosts a run may reach: allowlist entries (`host[:port]`) and the addresses a name may
//! resolve to.

use crate::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allowlist entry: `api.github.com`, `*.example.org:443`, `127.0.0.1:8000`, `[::1]:8080`,
/// or `*` (any host with a public address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: Host,
    /// The one port it allows; any port when `None`.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Any host.
    Any,
    /// This DNS name exactly (lower case, no trailing dot).
    Name(String),
    /// Any name under this suffix (`*.example.org`: `a.example.org`, `b.a.example.org`; not
    /// `example.org` itself).
    Under(String),
    /// This address.
    Ip(IpAddr),
}

/// The longest entry, bytes.
const MAX_ENTRY: usize = 260;

impl Rule {
    /// Reads an entry; a clear error for anything else.
    pub fn parse(entry: &str) -> Result<Rule, Error> {
        let bad = |why: &str| Error::Config(format!("network entry {entry:?}: {why}"));
        if entry.len() > MAX_ENTRY {
            return Err(bad("too long"));
        }
        let (host, port) = split_port(entry).map_err(bad)?;
        if host == "*." {
            return Err(bad("not a host name ('*.' goes before a domain)"));
        }
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        let host = if host == "*" {
            Host::Any
        } else if let Some(ip) = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::parse::<Ipv6Addr>)
        {
            Host::Ip(IpAddr::V6(ip.map_err(|_| bad("not an IPv6 address"))?))
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if let Some(suffix) = host.strip_prefix("*.").filter(|s| !s.is_empty()) {
            check_name(suffix).map_err(bad)?;
            Host::Under(suffix.to_string())
        } else {
            check_name(host).map_err(bad)?;
            Host::Name(host.to_string())
        };
        Ok(Rule { host, port })
    }

    /// Whether it allows `host` (as a URL spells it: lower case, IPv6 in brackets) on `port`.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        match &self.host {
            Host::Any => true,
            Host::Name(name) => name == host,
            Host::Under(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Host::Ip(ip) => literal(host) == Some(*ip),
        }
    }

    /// Whether it names one host exactly, with its port: the only kind of entry that reaches a
    /// loopback, private, link-local or metadata address.
    pub fn names_exactly(&self) -> bool {
        self.port.is_some() && matches!(self.host, Host::Name(_) | Host::Ip(_))
    }

    /// Whether it names a port.
    pub fn has_port(&self) -> bool {
        self.port.is_some()
    }
}

/// `host` and its port, if given (`[v6]:port` and `[v6]` for IPv6).
fn split_port(entry: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = match entry.rfind(':') {
        Some(at) if !entry[..at].contains(':') || entry[..at].ends_with(']') => {
            (&entry[..at], Some(&entry[at + 1..]))
        }
        Some(_) if !entry.starts_with('[') => return Err("an IPv6 address goes in brackets"),
        _ => (entry, None),
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err("a port is a number from 1 to 65535"),
        },
    };
    Ok((host, port))
}

/// A DNS name: labels of letters, digits and `-`, at most 253 bytes, the last not a number
/// (an address in another spelling — `0177.0.0.1`, `2130706433` — is written as an address).
fn check_name(name: &str) -> Result<(), &'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a host name (letters, digits, '-' and '.'; '*.' only in front)");
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return Err("an address in another spelling: write it as a.b.c.d or [v6]");
    }
    Ok(())
}

/// The address a URL's host spells, if it is one (`127.0.0.1`, `[::1]`).
pub fn literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// The hosts a run may reach: the operator's entries, and the run's own when it narrows them (a
/// request must pass both).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowlist {
    rules: Vec<Rule>,
}

impl Allowlist {
    /// The entries, each read with [`Rule::parse`].
    pub fn parse(entries: &[String]) -> Result<Allowlist, Error> {
        let rules = entries
            .iter()
            .map(|e| Rule::parse(e))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { rules })
    }

    /// Whether it has no entries (reaching nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// An entry that allows `host` on `port`: one naming it exactly with its port if there is
    /// one (`127.0.0.1:8000` beside `*`), whatever the order.
    pub fn find(&self, host: &str, port: u16) -> Option<&Rule> {
        let mut allowing = self.rules.iter().filter(|r| r.allows(host, port));
        let first = allowing.next()?;
        Some(match first.names_exactly() {
            true => first,
            false => allowing.find(|r| r.names_exactly()).unwrap_or(first),
        })
    }
}

/// Why an address is not public, or `None` for a public one.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_loopback() => "a loopback address",
        (169, 254) => "a link-local address (where cloud metadata services answer)",
        _ if ip.is_private() => "a private address",
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        (100, 64..=127) => "a shared (carrier-grade NAT) address",
        (192, 0) if c == 0 => "an IETF protocol address",
        (198, 18..=19) => "a benchmarking address",
        _ if ip.is_documentation() => "a documentation address",
        _ if ip.is_multicast() || a >= 240 => "a multicast, reserved or broadcast address",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let s = ip.segments();
    let v4_at = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // NAT64 (64:ff9b::/96, and the local-use 64:ff9b:1::/48) carries an IPv4 address in its
    // last 32 bits; 6to4 (2002::/16) in the 32 after its first 16.
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1) {
        return special_v4(v4_at(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return special_v4(v4_at(s[1], s[2]));
    }
    Some(match s[0] {
        // Teredo (2001::/32, its IPv4 address obscured) and the rest of the IETF's 2001::/23.
        0x2001 if s[1] < 0x0200 => "an IETF protocol address (Teredo among them)",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        x if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        0 => "a reserved address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_their_hosts_and_ports_only() {
        let r = Rule::parse("*.Example.org:443").unwrap();
        assert!(r.allows("api.example.org", 443));
        assert!(r.allows("a.b.example.org", 443));
        assert!(!r.allows("example.org", 443));
        assert!(!r.allows("evilexample.org", 443));
        assert!(!r.allows("api.example.org", 80));
        assert!(!r.names_exactly());
        let r = Rule::parse("api.github.com").unwrap();
        assert!(r.allows("api.github.com", 1234));
        assert!(!r.allows("api.github.com.evil.org", 443));
        assert!(!r.names_exactly());
        let r = Rule::parse("127.0.0.1:8000").unwrap();
        assert!(r.allows("127.0.0.1", 8000) && r.names_exactly());
        let r = Rule::parse("[::1]:8080").unwrap();
        assert!(r.allows("[::1]", 8080) && !r.allows("[::1]", 8081));
        assert!(Rule::parse("*").unwrap().allows("anything.org", 1));
        let list = Allowlist::parse(&["*".into(), "127.0.0.1:8000".into()]).unwrap();
        assert!(list.find("127.0.0.1", 8000).unwrap().names_exactly());
        assert!(!list.find("127.0.0.1", 8001).unwrap().names_exactly());
    }

    #[test]
    fn malformed_entries_are_refused_with_a_reason() {
        for (entry, why) in [
            ("", "no host"),
            (":80", "no host"),
            ("a.org:0", "port"),
            ("a.org:http", "port"),
            ("::1", "brackets"),
            ("a b.org", "not a host name"),
            ("*a.org", "not a host name"),
            ("a.*.org", "not a host name"),
            ("*.", "not a host name"),
            ("*.1.2.3", "another spelling"),
            ("2130706433:80", "another spelling"),
            ("0x7f.1", "another spelling"),
        ] {
            let e = Rule::parse(entry).unwrap_err().to_string();
            assert!(e.contains(why), "{entry:?}: {e}");
        }
    }

    #[test]
    fn special_addresses_are_named() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "100::1",
            "fd00::1",
            "fe80::1",
            "::",
        ] {
            assert!(special(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["93.184.216.34", "140.82.112.6", "2606:4700::6810:84e5"] {
            assert_eq!(special(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
