//! The plugin's side of the socket: connect (retrying while the agent is not there yet, within
//! the bound), send the request line, read the answer line, all with deadlines.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use super::protocol::{Answer, Request, MAX_ANSWER_BYTES};

/// How often a connect is tried again while the agent's socket is missing or refuses.
const CONNECT_RETRY: Duration = Duration::from_millis(200);
/// What the agent may take beyond the wait it was given to write its answer.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "the Weft agent is unreachable at {socket} ({error}; tried for {waited:.1?}): is \
         mesh-agent running on this node?"
    )]
    Unreachable {
        socket: String,
        error: io::Error,
        waited: Duration,
    },
    #[error("the Weft agent at {socket} did not answer within {waited:.1?}: {error}")]
    NoAnswer {
        socket: String,
        error: io::Error,
        waited: Duration,
    },
    #[error("the Weft agent at {socket} answered what weft-cni cannot read: {0}", socket = .1)]
    BadAnswer(String, String),
}

/// Sends `req` (its `wait_ms` set from `bound`) and returns the agent's answer, all within
/// `bound` plus a short grace for the answer itself.
pub fn ask(socket: &Path, mut req: Request, bound: Duration) -> Result<Answer, AskError> {
    let start = Instant::now();
    let deadline = start + bound;
    let name = socket.display().to_string();
    let stream = connect(socket, deadline).map_err(|error| AskError::Unreachable {
        socket: name.clone(),
        error,
        waited: start.elapsed(),
    })?;
    let left = deadline.saturating_duration_since(Instant::now());
    req.wait_ms = left.as_millis() as u64;
    let no_answer = |error| AskError::NoAnswer {
        socket: name.clone(),
        error,
        waited: start.elapsed(),
    };
    let line = exchange(stream, &req, left + ANSWER_GRACE).map_err(no_answer)?;
    serde_json::from_slice(&line).map_err(|e| AskError::BadAnswer(e.to_string(), name.clone()))
}

/// Tries until `deadline`, the last try at the deadline itself.
fn connect(socket: &Path, deadline: Instant) -> io::Result<UnixStream> {
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                std::thread::sleep(left.min(CONNECT_RETRY));
            }
        }
    }
}

fn exchange(stream: UnixStream, req: &Request, timeout: Duration) -> io::Result<Vec<u8>> {
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = Vec::new();
    BufReader::new(stream.take(MAX_ANSWER_BYTES as u64)).read_until(b'\n', &mut answer)?;
    if answer.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before a whole answer",
        ));
    }
    Ok(answer)
}
