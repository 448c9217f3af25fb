//! A packet capture on an interface of a node (an AF_PACKET socket inside its netns): what
//! actually crossed the wire between nodes, for asserting that meshed traffic is only TLS.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use crate::netns;

/// One TCP segment or UDP datagram (with a payload) seen on the wire.
#[derive(Debug, Clone)]
pub struct Segment {
    pub udp: bool,
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

pub struct WireTap {
    stop: Arc<AtomicBool>,
    segments: Arc<Mutex<Vec<Segment>>>,
    thread: Option<JoinHandle<()>>,
}

impl WireTap {
    /// Starts capturing on `iface` in netns `ns`; returns once the socket is bound.
    pub fn start(ns: &str, iface: &str) -> Self {
        let iface = std::ffi::CString::new(iface).expect("iface");
        let fd = netns::run_in(ns, move || open(&iface))
            .expect("enter netns")
            .expect("AF_PACKET socket");
        let stop = Arc::new(AtomicBool::new(false));
        let segments = Arc::new(Mutex::new(Vec::new()));
        let (s, seg) = (stop.clone(), segments.clone());
        let thread = std::thread::spawn(move || capture(fd, &s, &seg));
        Self {
            stop,
            segments,
            thread: Some(thread),
        }
    }

    /// Stops and returns every TCP segment and UDP datagram with a payload.
    pub fn finish(mut self) -> Vec<Segment> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.segments.lock().expect("lock"))
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn open(iface: &std::ffi::CStr) -> std::io::Result<i32> {
    // Safety: plain socket/bind/setsockopt calls on a new fd and stack-allocated structs.
    unsafe {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ifindex = libc::if_nametoindex(iface.as_ptr());
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // Wake up regularly to see the stop flag.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let big: libc::c_int = 64 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            4,
        );
        Ok(fd)
    }
}

fn capture(fd: i32, stop: &AtomicBool, out: &Mutex<Vec<Segment>>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // Safety: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            if let Some(s) = parse(&buf[..n as usize]) {
                out.lock().expect("lock").push(s);
            }
        } else if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    // Safety: fd is ours.
    unsafe { libc::close(fd) };
}

/// Ethernet / IPv4 / TCP or UDP, payload only.
fn parse(frame: &[u8]) -> Option<Segment> {
    let ip = frame.get(14..)?;
    let udp = match ip.get(9)? {
        6 => false,
        17 => true,
        _ => return None,
    };
    if u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 || ip.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = ip.get(ihl..total.min(ip.len()))?;
    let offset = if udp {
        8
    } else {
        usize::from(l4.get(12)? >> 4) * 4
    };
    let payload = l4.get(offset..)?.to_vec();
    if payload.is_empty() {
        return None;
    }
    let tcp = l4;
    Some(Segment {
        udp,
        src: std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        payload,
    })
}

/// Every payload byte of the capture, in order, for searching.
pub fn all_bytes(segments: &[Segment]) -> Vec<u8> {
    segments
        .iter()
        .flat_map(|s| s.payload.iter().copied())
        .collect()
}

/// A QUIC v1 long-header Initial packet (RFC 9000 §17.2.2): the start of a QUIC handshake.
pub fn is_quic_initial(s: &Segment) -> bool {
    s.udp && s.payload.len() > 5 && s.payload[0] & 0xf0 == 0xc0 && s.payload[1..5] == [0, 0, 0, 1]
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
