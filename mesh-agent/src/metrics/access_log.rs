//! The access log: one JSON line per connection, written by a thread of its own so that a slow
//! reader of stdout never stalls a connection. Lines the writer cannot take are dropped and
//! counted (`weft_access_log_dropped_total`), never buffered without bound.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, mpsc, Arc},
    time::SystemTime,
};

use super::Metrics;

/// Lines waiting for the writer.
const QUEUE: usize = 8192;

/// Where access-log lines go: `stdout`, `off` or a file path (appended).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    Stdout,
    Off,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Target::Stdout,
            "off" | "" => Target::Off,
            path => Target::File(path.into()),
        })
    }
}

pub struct AccessLog {
    tx: Option<mpsc::SyncSender<String>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn new(target: &Target, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn std::io::Write + Send> = match target {
            Target::Off => return Ok(Self { tx: None, metrics }),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                for line in rx {
                    if out.write_all(line.as_bytes()).is_err() || out.flush().is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn write(&self, entry: &impl serde::Serialize) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if tx.try_send(line).is_err() {
            self.metrics.access_log_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T08:15:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_763_800_500_123);
        assert_eq!(rfc3339(t), "2025-11-22T08:35:00.123Z");
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::new(&Target::File(path.clone()), Arc::default()).unwrap();
        for i in 0..3 {
            log.write(&serde_json::json!({ "n": i }));
        }
        drop(log); // the writer drains the queue, then ends
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let n: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(n, [0, 1, 2]);
    }
}
