//! `mesh-agent`: Weft's node agent. All wiring is in `app`.

use std::{process::ExitCode, sync::Arc};

use clap::Parser as _;
use mesh_agent::{
    admin::LogControl,
    cli::{Cli, Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("invalid --log filter {:?}: {e}; using info", cli.log);
        EnvFilter::new("info")
    });
    // Colour only for a person at a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // The admin endpoint's /logging changes the filter through a reload handle.
    let logging: LogControl = match cli.log_format {
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Arc::new(move |new| reload(&handle, new))
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Arc::new(move |new| reload(&handle, new))
        }
    };
    raise_fd_limit();
    spawn_heap_trimmer();
    let runtime = match cli.command {
        // A worker is one event loop, as an nginx worker is: the pool scales by processes, and
        // a request's hops between tasks (downstream, upstream, tunnel) stay on one thread
        // instead of waking another.
        Command::L7(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
    .expect("tokio runtime");
    let result = match cli.command {
        Command::Run(args) => {
            let mut cfg = args.into_config();
            (cfg.log, cfg.log_format) = (cli.log.clone(), cli.log_format);
            runtime.block_on(mesh_agent::app::run(cfg, Some(logging)))
        }
        Command::Ca(args) => runtime.block_on(mesh_agent::ca::run(args)),
        Command::L7(args) => runtime.block_on(mesh_agent::l7::worker::run(args, Some(logging))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mesh-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Applies a new filter (when given) and returns the filter in force.
fn reload<S>(
    handle: &tracing_subscriber::reload::Handle<EnvFilter, S>,
    new: Option<&str>,
) -> Result<String, String> {
    if let Some(new) = new {
        let filter = EnvFilter::try_new(new).map_err(|e| format!("invalid filter {new:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())?;
        tracing::info!(filter = new, "log filter changed");
    }
    handle
        .with_current(|f| f.to_string())
        .map_err(|e| e.to_string())
}

/// Each captured connection holds two sockets in the agent; the default soft limit (often 1024)
/// would cap a node at a few hundred connections. Raise it to the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            eprintln!("mesh-agent: cannot raise the open-file limit to {hard}: {e}");
        }
    }
}

/// How often the heap is checked for memory to give back, and how much free memory it may
/// keep before it is trimmed.
const HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
const HEAP_TRIM_FREE_BYTES: usize = 16 << 20;

/// glibc keeps what a burst of connections freed in its per-thread arenas: without a trim, RSS
/// after 10 000 connections closed stayed where it peaked. `malloc_trim(0)` returns the free
/// pages of every arena to the kernel; it runs only while the arenas hold more than
/// `HEAP_TRIM_FREE_BYTES` free (a small agent pays one `mallinfo2` walk per interval; trimming
/// pages already returned costs little). Kept to glibc rather than a new allocator: it needs no
/// C build and measured 6 KiB per idle connection once the relay stopped holding buffers. A
/// plain thread, so a busy runtime never delays it and it never delays the runtime.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_heap_trimmer() {
    let trim = || loop {
        std::thread::sleep(HEAP_TRIM_INTERVAL);
        // Safety: mallinfo2 has no preconditions; it only reads allocator statistics.
        #[allow(unsafe_code)]
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free >= HEAP_TRIM_FREE_BYTES {
            // Safety: malloc_trim has no preconditions; it releases free pages only.
            #[allow(unsafe_code)]
            unsafe {
                libc::malloc_trim(0)
            };
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(trim)
    {
        eprintln!("mesh-agent: no heap trimmer ({e}); freed memory stays with the process");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_heap_trimmer() {}
