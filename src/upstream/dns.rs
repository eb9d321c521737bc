//! Host names of services without an upstream entity: resolved when a configuration compiles,
//! then again in the background every `server.dns_refresh_interval` and at once on SIGHUP.
//! Every address of the preferred family is used in turn (round robin), IPv4 before IPv6 as
//! Kong's default `dns_order` (A before AAAA). The system resolver gives no TTL, hence the
//! interval; a failed or empty answer keeps the last good addresses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// One `host:port` and its current addresses.
#[derive(Debug)]
pub struct DnsName {
    pub host: String,
    pub port: u16,
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
}

impl DnsName {
    /// Resolves now (a configuration's first use); `previous` keeps its addresses when the
    /// resolver fails.
    pub fn new(host: &str, port: u16, previous: Option<&DnsName>) -> DnsName {
        let fresh = resolve(host, port);
        let addrs = match previous {
            Some(p) if fresh.is_empty() => p.addrs(),
            _ => Arc::new(fresh),
        };
        DnsName {
            host: host.to_string(),
            port,
            addrs: RwLock::new(addrs),
            next: AtomicUsize::new(0),
        }
    }

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The next address in turn; `None` when the name never resolved.
    pub fn pick(&self) -> Option<SocketAddr> {
        let addrs = self.addrs();
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs.get(i).copied()
    }

    /// Resolves again; returns whether the addresses changed.
    pub fn refresh(&self) -> bool {
        let fresh = resolve(&self.host, self.port);
        if fresh.is_empty() {
            tracing::warn!(host = %self.host, "DNS refresh found no address; keeping the last ones");
            return false;
        }
        if *self.addrs() == fresh {
            return false;
        }
        tracing::info!(host = %self.host, addrs = ?fresh, "DNS answer changed");
        if let Ok(mut a) = self.addrs.write() {
            *a = Arc::new(fresh);
        }
        true
    }
}

/// Every address of the preferred family: IPv4 when there is one, else IPv6.
pub fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let mut v4: Vec<SocketAddr> = Vec::new();
    for a in all.iter().filter(|a| a.is_ipv4()) {
        if !v4.contains(a) {
            v4.push(*a);
        }
    }
    if !v4.is_empty() {
        return v4;
    }
    let mut v6 = Vec::new();
    for a in all {
        if !v6.contains(&a) {
            v6.push(a);
        }
    }
    v6
}

/// Set by SIGHUP: the refresher resolves every name at its next tick.
static FORCE: AtomicBool = AtomicBool::new(false);

/// Asks the background refresher to resolve every name now.
pub fn force_refresh() {
    FORCE.store(true, Ordering::SeqCst);
}

/// Whether a refresh was asked for since the last call (SIGHUP), clearing the request.
pub fn take_forced() -> bool {
    FORCE.swap(false, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_to_ipv4_first_and_rotates() {
        let d = DnsName::new("localhost", 8080, None);
        let addrs = d.addrs();
        assert!(addrs.iter().all(|a| a.is_ipv4()), "{addrs:?}");
        assert!(addrs.contains(&"127.0.0.1:8080".parse().unwrap()));
        let picks: Vec<_> = (0..addrs.len() * 2).filter_map(|_| d.pick()).collect();
        for a in addrs.iter() {
            assert_eq!(picks.iter().filter(|p| *p == a).count(), 2);
        }
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses() {
        let good = DnsName::new("127.0.0.1", 1, None);
        let d = DnsName::new("no-such-host.invalid", 1, Some(&good));
        assert_eq!(d.pick(), Some("127.0.0.1:1".parse().unwrap()));
        assert!(!d.refresh());
        assert_eq!(d.pick(), Some("127.0.0.1:1".parse().unwrap()));
    }
}
