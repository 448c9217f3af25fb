//! Load shapes for `cargo xtask bench`. Each prints one JSON line.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{open, xfer};

/// `rr ADDR RATE COUNT`: one connection, COUNT requests of 1 KiB at RATE per second, each
/// echoed in full before the next is due. Latency is measured from the scheduled send time, so
/// a stall delays (and is charged to) every request behind it: no coordinated omission.
pub fn request_response(target: SocketAddr, rate: u64, count: usize) -> Value {
    const SIZE: usize = 1024;
    let (mut conn, _) = match open(target) {
        Ok(c) => c,
        Err(e) => return json!({"failed": count, "error": e}),
    };
    let _ = conn.stream.set_nodelay(true);
    let request: Vec<u8> = (0..SIZE as u64).map(weft_tests::pattern).collect();
    let mut reply = vec![0u8; SIZE];
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut micros = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if conn.stream.write_all(&request).is_err() || conn.reader.read_exact(&mut reply).is_err() {
            return json!({"failed": count - i, "error": "connection lost"});
        }
        if reply != request {
            return json!({"failed": count - i, "error": "reply differs from request"});
        }
        micros.push(due.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();
    json!({"micros": micros, "failed": 0})
}

/// `conns ADDR WORKERS SECONDS`: WORKERS threads open connections (connect + greeting) and close
/// them, back to back, for SECONDS: new connections per second.
pub fn connection_rate(target: SocketAddr, workers: usize, secs: u64) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < end {
                    match open(target) {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h.join().expect("worker");
        ok += o;
        failed += f;
    }
    let per_sec = ok as f64 / start.elapsed().as_secs_f64();
    json!({"ok": ok, "failed": failed, "per_sec": per_sec})
}

/// `streams ADDR N BYTES`: N connections at once, each echoing BYTES: aggregate throughput.
pub fn streams(target: SocketAddr, n: usize, bytes: u64) -> Value {
    let ready = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let conn = open(target);
                ready.wait();
                match conn {
                    Ok((mut c, _)) => xfer(&mut c, bytes)["intact"] == true,
                    Err(_) => false,
                }
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    let intact = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    let secs = start.elapsed().as_secs_f64();
    json!({"streams": n, "intact": intact, "secs": secs, "bytes_each_way": bytes * n as u64})
}

/// `hold ADDR N`: opens N connections (each greeted, so relayed end to end) and holds them idle.
/// Prints `{"open": ..}` once all are up, then waits for a line on stdin, closes them all and
/// prints `{"closed": ..}`. One descriptor per connection (no reader clone): N can be large.
pub fn hold(target: SocketAddr, n: usize) -> Value {
    const WORKERS: usize = 8;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let count = n / WORKERS + usize::from(w < n % WORKERS);
            std::thread::spawn(move || {
                let (mut conns, mut errors) = (Vec::with_capacity(count), Vec::new());
                for _ in 0..count {
                    match greeted(target) {
                        Ok(c) => conns.push(c),
                        Err(e) => errors.push(e),
                    }
                }
                (conns, errors)
            })
        })
        .collect();
    let (mut conns, mut errors) = (Vec::with_capacity(n), Vec::new());
    for w in workers {
        let (c, e) = w.join().expect("hold worker");
        conns.extend(c);
        errors.extend(e);
    }
    let failed = errors.len();
    errors.truncate(5);
    println!(
        "{}",
        json!({"open": conns.len(), "failed": failed, "errors": errors})
    );
    std::io::stdout().flush().ok();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let closed = conns.len();
    drop(conns);
    json!({ "closed": closed })
}

/// A connection whose greeting line has arrived.
fn greeted(target: SocketAddr) -> Result<std::net::TcpStream, String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&target, super::TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(super::TIMEOUT)).ok();
    let mut buf = [0u8; 512];
    let mut seen = 0;
    while !buf[..seen].contains(&b'\n') {
        match s.read(&mut buf[seen..]) {
            Ok(0) => return Err("closed before greeting".into()),
            Ok(k) => seen += k,
            Err(e) => return Err(e.to_string()),
        }
        if seen == buf.len() {
            return Err("greeting too long".into());
        }
    }
    Ok(s)
}
