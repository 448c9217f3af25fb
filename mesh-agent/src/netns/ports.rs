//! Keeping the mesh's in-pod ports out of the pod's ephemeral range.
//!
//! The agent binds 15001, 15006 and 15008 inside every enrolled pod. A client socket of the pod
//! that was given one of them as its ephemeral port (or its TIME_WAIT) would make that bind fail
//! with "Address already in use". `net.ipv4.ip_local_reserved_ports` is per network namespace
//! (and covers IPv6 too): ports in it are never chosen for bind(0) or connect(), while explicit
//! binds — the agent's — still work. The value is merged with what the pod already reserves.
//! A TIME_WAIT left from before the reservation is destroyed when it blocks a bind (`sockdiag`).
//! It is left in place when the pod is released: reserving costs the pod three ports of its
//! range, and removing it could drop a reservation someone else made.

use std::io;

use mesh_common::ports;

use super::Netns;

/// The ports the agent listens on inside a pod.
pub const MESH_PORTS: [u16; 3] = [ports::OUTBOUND, ports::INBOUND, ports::HBONE];

/// Where the sysctl is written: /proc/sys, or — in a container, whose /proc/sys the runtime
/// mounts read-only — the host's procfs mounted at /host/proc (deploy/kubernetes/agent.yaml).
/// Either shows the netns of the thread that opens it.
const RESERVED_PORTS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_local_reserved_ports",
    "/host/proc/sys/net/ipv4/ip_local_reserved_ports",
];

/// Adds [`MESH_PORTS`] to the pod's reserved ports (written from inside its netns, where
/// /proc/sys/net is the pod's).
pub fn reserve_mesh_ports(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no procfs");
        for path in RESERVED_PORTS {
            match reserve_at(path) {
                Ok(()) => return Ok(()),
                Err(e) => last = io::Error::new(e.kind(), format!("{path}: {e}")),
            }
        }
        Err(last)
    })?
}

fn reserve_at(path: &str) -> io::Result<()> {
    let current = std::fs::read_to_string(path)?;
    match merged(&current, &MESH_PORTS) {
        Some(value) => std::fs::write(path, value),
        None => Ok(()),
    }
}

/// The new value of ip_local_reserved_ports (`80,1000-1010` style) that also holds `wanted`, or
/// None when it already does.
fn merged(current: &str, wanted: &[u16]) -> Option<String> {
    let ranges: Vec<(u16, u16)> = current
        .trim()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|item| {
            let (lo, hi) = item.split_once('-').unwrap_or((item, item));
            Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
        })
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|p| !ranges.iter().any(|(lo, hi)| (lo..=hi).contains(p)))
        .map(u16::to_string)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let kept = current.trim();
    Some(if kept.is_empty() {
        missing.join(",")
    } else {
        format!("{kept},{}", missing.join(","))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_with_what_the_pod_reserves() {
        assert_eq!(
            merged("\n", &MESH_PORTS).as_deref(),
            Some("15001,15006,15008")
        );
        assert_eq!(
            merged("80,15006\n", &MESH_PORTS).as_deref(),
            Some("80,15006,15001,15008")
        );
        assert_eq!(merged("15000-15010\n", &MESH_PORTS), None);
        assert_eq!(merged("15001,15006,15008\n", &MESH_PORTS), None);
        assert_eq!(
            merged("1000-2000,15007-15008", &MESH_PORTS).as_deref(),
            Some("1000-2000,15007-15008,15001,15006")
        );
    }
}
