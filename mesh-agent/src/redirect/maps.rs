//! Typed access to the pinned maps the agent reads and writes. Each map sits behind its own
//! mutex: every operation is one short syscall.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Mutex,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, MapError, PerCpuArray, SockHash,
    },
    Ebpf,
};
use mesh_common::{
    maps as names, stats, FlowKey, PairKey, PodEntry, SockAddr, AF_INET, CONFIG_SPLICE,
    POD_FLAG_ENROLLED,
};

use super::Error;

pub struct Maps {
    orig_by_cookie: Mutex<HashMap<MapData, u64, SockAddr>>,
    orig_by_flow: Mutex<HashMap<MapData, FlowKey, SockAddr>>,
    socks: Mutex<SockHash<MapData, PairKey>>,
    slow: Mutex<HashMap<MapData, PairKey, u32>>,
    inbound: Mutex<SockHash<MapData, SockAddr>>,
    pods: Mutex<HashMap<MapData, SockAddr, PodEntry>>,
    deliveries: Mutex<HashMap<MapData, PairKey, u32>>,
    excluded_v4: Mutex<LpmTrie<MapData, u32, u32>>,
    excluded_v6: Mutex<LpmTrie<MapData, [u32; 4], u32>>,
    excluded_ports: Mutex<HashMap<MapData, u16, u32>>,
    stats: PerCpuArray<MapData, u64>,
    config: Mutex<Array<MapData, u32>>,
    splice: std::sync::atomic::AtomicBool,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|error| Error::Map { name, error })
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |error| Error::Map { name, error }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Ok(Self {
            orig_by_cookie: Mutex::new(take(ebpf, names::ORIG_BY_COOKIE)?),
            orig_by_flow: Mutex::new(take(ebpf, names::ORIG_BY_FLOW)?),
            socks: Mutex::new(take(ebpf, names::SOCKS)?),
            slow: Mutex::new(take(ebpf, names::SLOW)?),
            inbound: Mutex::new(take(ebpf, names::INBOUND_LISTENERS)?),
            pods: Mutex::new(take(ebpf, names::PODS)?),
            deliveries: Mutex::new(take(ebpf, names::DELIVERIES)?),
            excluded_v4: Mutex::new(take(ebpf, names::EXCLUDED_V4)?),
            excluded_v6: Mutex::new(take(ebpf, names::EXCLUDED_V6)?),
            excluded_ports: Mutex::new(take(ebpf, names::EXCLUDED_PORTS)?),
            stats: take(ebpf, names::STATS)?,
            config: Mutex::new(take(ebpf, names::CONFIG)?),
            splice: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Turns sk_msg splicing of same-node loopback legs on or off (kernel and agent side).
    pub fn set_splice(&self, on: bool) -> Result<(), Error> {
        let flags = if on { CONFIG_SPLICE } else { 0 };
        self.config
            .lock()
            .expect("map lock")
            .set(0, flags, 0)
            .map_err(map_err(names::CONFIG))?;
        self.splice.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Enters a delivery connect from `client` (the agent's socket, bound to the client's
    /// address) to `app` (the application in its pod), so that sk_lookup leaves its SYN to the
    /// application. Fails when the map is full: the caller then delivers from 127.0.0.6.
    pub fn add_delivery(&self, app: SocketAddr, client: SocketAddr) -> Result<(), Error> {
        let mut map = self.deliveries.lock().expect("map lock");
        map.insert(delivery_key(app, client), 0, 0)
            .map_err(map_err(names::DELIVERIES))
    }

    /// Forgets a delivery connect once it is answered (or failed): later packets of the
    /// connection find its socket before sk_lookup runs.
    pub fn remove_delivery(&self, app: SocketAddr, client: SocketAddr) {
        let mut map = self.deliveries.lock().expect("map lock");
        let _ = map.remove(&delivery_key(app, client));
    }

    /// The original destination of a captured connection, by the application socket's address
    /// (the accepted socket's peer) in its netns. The entry is consumed.
    pub fn take_original_dst(&self, netns: u64, app: SocketAddr) -> Option<SocketAddr> {
        let key = FlowKey {
            netns,
            addr: to_key(app),
            _pad: 0,
        };
        let mut map = self.orig_by_flow.lock().expect("map lock");
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(from_key(orig))
    }

    /// Adds the agent's end of an in-pod loopback leg to the sockhash so that sk_msg can splice it
    /// with the application's end. The kernel removes it when the socket closes.
    pub fn add_splice(
        &self,
        netns: u64,
        local: SocketAddr,
        remote: SocketAddr,
        sock: &impl AsRawFd,
    ) -> Result<(), Error> {
        if !self.splice.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let key = PairKey {
            netns,
            local: to_key(local),
            remote: to_key(remote),
        };
        let mut map = self.socks.lock().expect("map lock");
        map.insert(key, sock.as_raw_fd(), 0)
            .map_err(map_err(names::SOCKS))
    }

    /// Marks a pod address as enrolled and registers its inbound capture listener.
    pub fn register_pod(
        &self,
        ip: IpAddr,
        netns: u64,
        listener: &impl AsRawFd,
    ) -> Result<(), Error> {
        let key = to_key(SocketAddr::new(ip, 0));
        let entry = PodEntry {
            netns,
            flags: POD_FLAG_ENROLLED,
            _pad: 0,
        };
        self.pods
            .lock()
            .expect("map lock")
            .insert(key, entry, 0)
            .map_err(map_err(names::PODS))?;
        self.inbound
            .lock()
            .expect("map lock")
            .insert(key, listener.as_raw_fd(), 0)
            .map_err(map_err(names::INBOUND_LISTENERS))
    }

    pub fn unregister_pod(&self, ip: IpAddr) {
        let key = to_key(SocketAddr::new(ip, 0));
        let _ = self.inbound.lock().expect("map lock").remove(&key);
        let _ = self.pods.lock().expect("map lock").remove(&key);
    }

    /// Replaces the excluded ranges and ports with the configured ones.
    pub fn set_exclusions(&self, cidrs: &[String], ports: &[u16]) -> Result<(), Error> {
        let parsed = cidrs
            .iter()
            .map(|c| parse_cidr(c).ok_or_else(|| Error::BadCidr(c.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        clear_lpm(&mut self.excluded_v4.lock().expect("map lock"));
        clear_lpm(&mut self.excluded_v6.lock().expect("map lock"));
        let mut port_map = self.excluded_ports.lock().expect("map lock");
        let stale: Vec<u16> = port_map.keys().filter_map(Result::ok).collect();
        for p in stale {
            let _ = port_map.remove(&p);
        }
        for p in ports {
            port_map
                .insert(p, 1, 0)
                .map_err(map_err(names::EXCLUDED_PORTS))?;
        }
        for (ip, prefix) in parsed {
            let k = to_key(SocketAddr::new(ip, 0));
            let r = if k.family == AF_INET {
                let key = Key::new(prefix, k.addr[0]);
                self.excluded_v4
                    .lock()
                    .expect("map lock")
                    .insert(&key, 1, 0)
            } else {
                let key = Key::new(prefix, k.addr);
                self.excluded_v6
                    .lock()
                    .expect("map lock")
                    .insert(&key, 1, 0)
            };
            r.map_err(map_err(names::EXCLUDED_V4))?;
        }
        Ok(())
    }

    /// Kernel-side counters, summed over CPUs.
    pub fn stats(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (i, name) in stats::NAMES.iter().enumerate() {
            let total = self
                .stats
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            out.insert(*name, total);
        }
        out
    }

    /// Number of entries in each per-connection map: how /config_dump shows that nothing leaks.
    pub fn entry_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        out.insert(
            names::ORIG_BY_COOKIE,
            self.orig_by_cookie.lock().expect("map lock").keys().count(),
        );
        out.insert(
            names::ORIG_BY_FLOW,
            self.orig_by_flow.lock().expect("map lock").keys().count(),
        );
        out.insert(
            names::SOCKS,
            self.socks.lock().expect("map lock").keys().count(),
        );
        out.insert(
            names::SLOW,
            self.slow.lock().expect("map lock").keys().count(),
        );
        out.insert(
            names::PODS,
            self.pods.lock().expect("map lock").keys().count(),
        );
        out
    }
}

fn clear_lpm<K: aya::Pod>(trie: &mut LpmTrie<MapData, K, u32>) {
    let keys: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = trie.remove(&k);
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u32>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// A socket address as the eBPF maps key it (see mesh_common::SockAddr).
/// sk_lookup knows no netns cookie: pod addresses are unique on a node, so netns is 0.
fn delivery_key(app: SocketAddr, client: SocketAddr) -> PairKey {
    PairKey {
        netns: 0,
        local: to_key(app),
        remote: to_key(client),
    }
}

pub fn to_key(addr: SocketAddr) -> SockAddr {
    match addr.ip() {
        IpAddr::V4(ip) => SockAddr::v4(u32::from_ne_bytes(ip.octets()), addr.port()),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            SockAddr::v6([word(0), word(4), word(8), word(12)], addr.port())
        }
    }
}

pub fn from_key(key: SockAddr) -> SocketAddr {
    if key.family == AF_INET {
        let ip = Ipv4Addr::from(key.addr[0].to_ne_bytes());
        return SocketAddr::new(ip.into(), key.port);
    }
    let mut o = [0u8; 16];
    for (i, w) in key.addr.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    SocketAddr::new(Ipv6Addr::from(o).into(), key.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_normalise_mapped_addresses() {
        for s in ["10.1.2.3:8080", "[fd00::1]:443", "127.0.0.1:15001"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(from_key(to_key(a)), a);
        }
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:80".parse().unwrap();
        assert_eq!(from_key(to_key(mapped)), "10.0.0.7:80".parse().unwrap());
    }

    #[test]
    fn cidrs_parse_with_and_without_prefix() {
        assert_eq!(
            parse_cidr("10.96.0.0/12"),
            Some(("10.96.0.0".parse().unwrap(), 12))
        );
        assert_eq!(
            parse_cidr("10.0.0.1"),
            Some(("10.0.0.1".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("fd00::/8"), Some(("fd00::".parse().unwrap(), 8)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("ten/8"), None);
    }
}
