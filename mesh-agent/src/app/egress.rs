//! Resolving the hosts ServiceEntries name, so that REGISTRY_ONLY can let their addresses out:
//! again whenever the set of hosts changes and every `EGRESS_DNS_REFRESH`. A name that does not
//! resolve is logged and keeps its last addresses (a DNS hiccup must not cut egress).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{config::EGRESS_DNS_REFRESH, proxy::Shared};

pub async fn resolve_hosts(shared: Arc<Shared>, mut hosts: watch::Receiver<Vec<String>>) {
    let mut tick = tokio::time::interval(EGRESS_DNS_REFRESH);
    loop {
        tokio::select! {
            changed = hosts.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let names = hosts.borrow_and_update().clone();
        let previous = shared.egress_hosts.load_full();
        let mut resolved = HashMap::new();
        for name in names {
            let lookup = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<IpAddr>>());
            match lookup {
                Ok(mut ips) => {
                    ips.sort();
                    ips.dedup();
                    debug!(host = %name, ?ips, "ServiceEntry host resolved");
                    resolved.insert(name, ips);
                }
                Err(e) => {
                    warn!(host = %name, error = %e, "ServiceEntry host does not resolve; keeping its last addresses");
                    if let Some(old) = previous.get(&name) {
                        resolved.insert(name, old.clone());
                    }
                }
            }
        }
        shared.egress_hosts.store(Arc::new(resolved));
    }
}
