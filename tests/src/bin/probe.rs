//! `weft-probe`: the application in test pods. It reports what an application sees, so tests
//! can assert on it: a server greets every connection with the addresses it sees and echoes;
//! a client reports getsockname/getpeername, the greeting, and whether echoed bytes match.
//!
//!   weft-probe serve --name NAME --ports P[,P...]     prints "ready" once listening
//!   weft-probe http-serve --name NAME --ports P[,P...]  an HTTP application (see probe/http.rs)
//!   weft-probe grpc-serve --name NAME --ports P[,P...]  a gRPC server (tonic; see probe/grpc.rs)
//!   weft-probe grpc-call ADDR CASE ARGS...            a gRPC client call, one JSON line
//!   weft-probe ws-serve --name NAME --ports P[,P...]    a WebSocket echo server (see probe/ws.rs)
//!   weft-probe ws-call URL                            a WebSocket client exchange, one JSON line
//!   weft-probe client                                 commands on stdin, one JSON line each:
//!       connect ADDR BYTES | open ID ADDR | xfer ID BYTES | close ID | end ID
//!   weft-probe steady ADDR PERIOD_MS                  a new connection (64 B echoed) every
//!                                                     PERIOD_MS until stdin closes; "ready"
//!                                                     after the first, then one JSON line
//!   weft-probe parallel ADDR[,ADDR...] N              N simultaneous connections
//!   weft-probe churn ADDR N                           N short connections in a row
//!   weft-probe latency ADDR N                         N connect+greeting round trips (bench)
//!   weft-probe soak ADDR SECONDS                      connections with 4 KiB echoed, for a while
//!   weft-probe rr ADDR RATE COUNT                     1 KiB request/response at a fixed rate (bench)
//!   weft-probe conns ADDR WORKERS SECONDS             new connections per second (bench)
//!   weft-probe streams ADDR N BYTES                   N concurrent echo streams (bench)
//!   weft-probe hold ADDR N                            N idle connections until a stdin line (bench)

#[path = "probe/grpc.rs"]
mod grpc;
#[path = "probe/http.rs"]
mod http;
#[path = "probe/load.rs"]
mod load;
#[path = "probe/ws.rs"]
mod ws;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "serve" => serve(&flag(&args, "--name"), &flag(&args, "--ports")),
        "http-serve" => http::serve(&flag(&args, "--name"), &flag(&args, "--ports")),
        "grpc-serve" => grpc::serve(&flag(&args, "--name"), &flag(&args, "--ports")),
        "grpc-call" => grpc::call(arg(1), &args[2.min(args.len())..]),
        "ws-serve" => ws::serve(&flag(&args, "--name"), &flag(&args, "--ports")),
        "ws-call" => ws::call(arg(1)),
        "client" => client(),
        "parallel" => println!("{}", parallel(&addrs(arg(1)), arg(2).parse().expect("N"))),
        "steady" => steady(addr(arg(1)), arg(2).parse().expect("PERIOD_MS")),
        "churn" => println!("{}", churn(addr(arg(1)), arg(2).parse().expect("N"))),
        "latency" => println!("{}", latency(addr(arg(1)), arg(2).parse().expect("N"))),
        "soak" => println!("{}", soak(addr(arg(1)), arg(2).parse().expect("seconds"))),
        "rr" => println!(
            "{}",
            load::request_response(addr(arg(1)), num(arg(2)), num(arg(3)) as usize)
        ),
        "conns" => println!(
            "{}",
            load::connection_rate(addr(arg(1)), num(arg(2)) as usize, num(arg(3)))
        ),
        "streams" => println!(
            "{}",
            load::streams(addr(arg(1)), num(arg(2)) as usize, num(arg(3)))
        ),
        "hold" => println!("{}", load::hold(addr(arg(1)), num(arg(2)) as usize)),
        other => {
            eprintln!("unknown command {other:?}; see the header of tests/src/bin/probe.rs");
            std::process::exit(2);
        }
    }
}

fn flag(args: &[String], name: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("missing {name}"));
    args[i + 1].clone()
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("bad number {s:?}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("bad address {s:?}"))
}

fn addrs(s: &str) -> Vec<SocketAddr> {
    s.split(',').map(addr).collect()
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max;
        // Safety: lim is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

// ---- server ----

fn serve(name: &str, ports: &str) {
    let mut listeners = Vec::new();
    for p in ports.split(',') {
        let l = TcpListener::bind(("0.0.0.0", p.parse::<u16>().expect("port"))).expect("bind");
        listeners.push(l);
    }
    for l in listeners {
        let name = name.to_owned();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let name = name.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || greet_and_echo(&name, conn))
                    .ok();
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}

fn greet_and_echo(name: &str, mut conn: TcpStream) {
    let fmt = |a: std::io::Result<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let greeting =
        json!({"server": name, "peer": fmt(conn.peer_addr()), "local": fmt(conn.local_addr())});
    if writeln!(conn, "{greeting}").is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

// ---- client ----

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

fn open(addr: SocketAddr) -> Result<(Conn, Value), String> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).ok();
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(format!("closed before greeting (local {local})")),
        Err(e) => return Err(format!("{e} (local {local})")),
        Ok(_) => {}
    }
    let greeting: Value =
        serde_json::from_str(&line).map_err(|e| format!("bad greeting {line:?}: {e}"))?;
    let report = json!({"ok": true, "local": local.to_string(), "peer": peer.to_string(), "greeting": greeting});
    Ok((Conn { stream, reader }, report))
}

/// Deterministic bytes (see weft_tests::pattern) and an FNV-1a digest of both directions.
use weft_tests::pattern;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn xfer(conn: &mut Conn, bytes: u64) -> Value {
    let mut writer = match conn.stream.try_clone() {
        Ok(w) => w,
        Err(e) => return json!({"ok": false, "error": e.to_string()}),
    };
    let sender = std::thread::spawn(move || {
        let mut h = FNV_START;
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while sent < bytes {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + k as u64);
            }
            if writer.write_all(&chunk[..n]).is_err() {
                break;
            }
            h = fnv(h, &chunk[..n]);
            sent += n as u64;
        }
        (sent, h)
    });
    let mut h = FNV_START;
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut error = None;
    while received < bytes {
        let want = (bytes - received).min(buf.len() as u64) as usize;
        match conn.reader.read(&mut buf[..want]) {
            Ok(0) => {
                error = Some("connection closed early".to_owned());
                break;
            }
            Ok(n) => {
                h = fnv(h, &buf[..n]);
                received += n as u64;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let (sent, sent_hash) = sender.join().unwrap_or((0, 0));
    let intact = error.is_none() && sent == bytes && received == bytes && sent_hash == h;
    json!({"ok": error.is_none(), "error": error, "sent": sent, "received": received, "intact": intact})
}

fn connect(addr: SocketAddr, bytes: u64) -> Value {
    let (mut conn, mut report) = match open(addr) {
        Ok(c) => c,
        Err(e) => return json!({"ok": false, "error": e}),
    };
    let x = xfer(&mut conn, bytes);
    // Half-close: the far end must see our EOF and answer with its own.
    let _ = conn.stream.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let eof = conn.reader.read_to_end(&mut rest);
    let clean_eof = eof.is_ok() && rest.is_empty();
    if !clean_eof {
        report["eof_error"] = json!(eof.err().map(|e| e.to_string()));
        report["bytes_after_echo"] = json!(rest.len());
    }
    for k in ["ok", "error", "sent", "received", "intact"] {
        report[k] = x[k].clone();
    }
    report["clean_eof"] = json!(clean_eof);
    report
}

fn client() {
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let out = match w.as_slice() {
            ["connect", a, n] => connect(addr(a), n.parse().expect("bytes")),
            ["open", id, a] => match open(addr(a)) {
                Ok((c, report)) => {
                    conns.insert(id.to_string(), c);
                    report
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            ["xfer", id, n] => match conns.get_mut(*id) {
                Some(c) => xfer(c, n.parse().expect("bytes")),
                None => json!({"ok": false, "error": "no such connection"}),
            },
            ["close", id] => json!({"ok": conns.remove(*id).is_some()}),
            ["end", id] => match conns.remove(*id) {
                Some(c) => wait_end(c),
                None => json!({"ok": false, "error": "no such connection"}),
            },
            _ => json!({"ok": false, "error": format!("unknown command {line:?}")}),
        };
        println!("{out}");
        std::io::stdout().flush().ok();
    }
}

// ---- load shapes ----

/// Each connection reports whether it matched, and the address the server saw it from with
/// its own local port: the summary says which source IPs the servers saw, how many saw the
/// client's own port, and how many distinct addresses there were.
fn parallel(targets: &[SocketAddr], n: usize) -> Value {
    let start = Arc::new(Barrier::new(n));
    let done = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let target = targets[i % targets.len()];
            let (start, done) = (start.clone(), done.clone());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    start.wait();
                    let r = open(target).map(|(mut c, report)| {
                        let x = xfer(&mut c, 8);
                        let seen_local = report["greeting"]["local"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        let seen_peer = report["peer"].as_str().unwrap_or("").to_owned();
                        let server_saw: Option<SocketAddr> = report["greeting"]["peer"]
                            .as_str()
                            .and_then(|p| p.parse().ok());
                        let local: Option<SocketAddr> =
                            report["local"].as_str().and_then(|p| p.parse().ok());
                        (
                            seen_local == target.to_string()
                                && seen_peer == target.to_string()
                                && x["intact"] == true,
                            server_saw,
                            local.map(|l| l.port()),
                            c,
                        )
                    });
                    // Hold every connection until all are through: they are truly concurrent.
                    done.wait();
                    r.map(|(matched, saw, port, _c)| (matched, saw, port))
                })
                .expect("spawn")
        })
        .collect();
    let (mut ok, mut mismatched, mut errors) = (0, 0, Vec::new());
    let (mut ips, mut seen, mut own_port) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
        0,
    );
    for h in handles {
        match h.join().expect("thread") {
            Ok((matched, saw, port)) => {
                if matched {
                    ok += 1;
                } else {
                    mismatched += 1;
                }
                if let Some(saw) = saw {
                    ips.insert(saw.ip().to_string());
                    seen.insert(saw);
                    if Some(saw.port()) == port {
                        own_port += 1;
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let failed = errors.len();
    errors.truncate(5);
    json!({"total": n, "ok": ok, "mismatched": mismatched, "failed": failed, "errors": errors,
        "server_saw_ips": ips, "server_saw_distinct": seen.len(), "server_saw_own_port": own_port})
}

/// Waits for the far end to end a kept connection: how it ended (a clean end of stream, or
/// an error such as a reset).
fn wait_end(mut c: Conn) -> Value {
    let mut buf = [0u8; 4096];
    let mut extra = 0;
    loop {
        match c.reader.read(&mut buf) {
            Ok(0) => return json!({"ok": true, "eof": true, "bytes": extra}),
            Ok(n) => extra += n,
            Err(e) => {
                return json!({"ok": false, "eof": false, "error": e.to_string(), "kind": format!("{:?}", e.kind())})
            }
        }
    }
}

/// Connections at a steady pace, each checked (64 B echoed, clean end), until stdin closes;
/// counts failures and the longest time without a successful connection.
fn steady(target: SocketAddr, period_ms: u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let period = Duration::from_millis(period_ms);
    let (mut ok, mut errors) = (0u64, Vec::new());
    let mut failed = 0u64;
    let mut last_ok = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut next = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let r = connect(target, 64);
        if r["intact"] == true && r["clean_eof"] == true {
            if ok == 0 {
                println!("ready");
                std::io::stdout().flush().ok();
            }
            ok += 1;
            longest_gap = longest_gap.max(last_ok.elapsed());
            last_ok = Instant::now();
        } else if ok > 0 {
            failed += 1;
            if errors.len() < 5 {
                errors.push(r);
            }
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    let gap_ms = longest_gap.as_millis() as u64;
    println!(
        "{}",
        json!({"ok": ok, "failed": failed, "errors": errors, "longest_gap_ms": gap_ms})
    );
}

fn churn(target: SocketAddr, n: usize) -> Value {
    let (mut ok, mut errors) = (0, Vec::new());
    for _ in 0..n {
        match open(target) {
            Ok(_) => ok += 1,
            Err(e) => errors.push(e),
        }
    }
    let failed = errors.len();
    errors.truncate(5);
    json!({"ok": ok, "failed": failed, "errors": errors})
}

/// Connection after connection (4 KiB echoed and checked each) until `secs` have passed.
fn soak(target: SocketAddr, secs: u64) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut ok, mut errors) = (0u64, Vec::new());
    while Instant::now() < end {
        let r = connect(target, 4096);
        if r["intact"] == true && r["clean_eof"] == true {
            ok += 1;
        } else {
            errors.push(r);
        }
    }
    let failed = errors.len();
    errors.truncate(5);
    json!({"ok": ok, "failed": failed, "errors": errors})
}

/// Connect + first byte (the greeting) latencies in microseconds, sorted.
fn latency(target: SocketAddr, n: usize) -> Value {
    let mut micros = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let t = Instant::now();
        match open(target) {
            Ok(_) => micros.push(t.elapsed().as_micros() as u64),
            Err(_) => failed += 1,
        }
    }
    micros.sort_unstable();
    json!({"micros": micros, "failed": failed})
}
