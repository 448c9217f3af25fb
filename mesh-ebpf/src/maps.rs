//! The maps, pinned by name so that an agent restart finds the same state.
//! Their meaning is documented once, in `mesh_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use mesh_common::{limits, stats, FlowKey, PairKey, PodEntry, SockAddr};

#[map(name = "WEFT_ORIG_CK")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(limits::CONNECTIONS, 0);

#[map(name = "WEFT_ORIG_FLOW")]
pub static ORIG_BY_FLOW: LruHashMap<FlowKey, SockAddr> = LruHashMap::pinned(limits::CONNECTIONS, 0);

#[map(name = "WEFT_SOCKS")]
pub static SOCKS: SockHash<PairKey> = SockHash::pinned(limits::CONNECTIONS, 0);

#[map(name = "WEFT_SLOW")]
pub static SLOW: LruHashMap<PairKey, u32> = LruHashMap::pinned(limits::CONNECTIONS, 0);

#[map(name = "WEFT_INBOUND")]
pub static INBOUND_LISTENERS: SockHash<SockAddr> = SockHash::pinned(limits::PODS, 0);

#[map(name = "WEFT_DELIVER")]
pub static DELIVERIES: HashMap<PairKey, u32> = HashMap::pinned(limits::DELIVERIES, 0);

#[map(name = "WEFT_PODS")]
pub static PODS: HashMap<SockAddr, PodEntry> = HashMap::pinned(limits::PODS, 0);

#[map(name = "WEFT_EXCL_V4")]
pub static EXCLUDED_V4: LpmTrie<u32, u32> = LpmTrie::pinned(limits::EXCLUDED_RANGES, 0);

#[map(name = "WEFT_EXCL_V6")]
pub static EXCLUDED_V6: LpmTrie<[u32; 4], u32> = LpmTrie::pinned(limits::EXCLUDED_RANGES, 0);

#[map(name = "WEFT_EXCL_PORTS")]
pub static EXCLUDED_PORTS: HashMap<u16, u32> = HashMap::pinned(limits::EXCLUDED_PORTS, 0);

#[map(name = "WEFT_CONFIG")]
pub static CONFIG: Array<u32> = Array::pinned(1, 0);

/// Is a switch of the CONFIG map on?
#[inline(always)]
pub fn enabled(bit: u32) -> bool {
    CONFIG.get(0).is_some_and(|flags| flags & bit != 0)
}

#[map(name = "WEFT_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // Safety: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Is the destination excluded from capture (by range or by port)?
#[inline(always)]
pub fn excluded(dst: &SockAddr) -> bool {
    if EXCLUDED_PORTS.get_ptr(dst.port).is_some() {
        return true;
    }
    if dst.family == mesh_common::AF_INET {
        EXCLUDED_V4.get(Key::new(32, dst.addr[0])).is_some()
    } else {
        EXCLUDED_V6.get(Key::new(128, dst.addr)).is_some()
    }
}
