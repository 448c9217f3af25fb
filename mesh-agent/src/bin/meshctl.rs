//! `meshctl`: Weft's operator CLI.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use mesh_agent::source::load_dir;

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Weft operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check configuration files with the agent's own parser; exit non-zero on any error.
    Validate {
        /// A file or a directory of YAML documents.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
    /// The CustomResourceDefinitions of Weft's kinds, generated from the agent's own types.
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long, conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Exit non-zero if the files in this directory differ from the generated ones.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Show an agent's enrolled pods and hook state.
    Status {
        /// The agent's admin address (in the node's network namespace).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Print the raw JSON.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { path } => validate(path),
        Command::Crds { out, check } => crds(out, check),
        Command::Status { admin, output } => match status(admin, output.as_deref() == Some("json"))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshctl: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(path: PathBuf) -> ExitCode {
    let dir = tempdir_for(&path);
    let (state, errors) = load_dir(&dir.0);
    for e in &errors {
        println!("error: {e}");
    }
    println!(
        "{} error(s); {} pod(s), {} namespace(s), {} node(s) read",
        errors.len(),
        state.pods.len(),
        state.namespaces.len(),
        state.nodes.len()
    );
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn crds(out: Option<PathBuf>, check: Option<PathBuf>) -> ExitCode {
    let all = mesh_agent::crd::all();
    if let Some(dir) = check {
        let stale: Vec<&String> = all
            .iter()
            .filter(|(file, yaml)| {
                std::fs::read_to_string(dir.join(file)).ok().as_ref() != Some(yaml)
            })
            .map(|(file, _)| file)
            .collect();
        if stale.is_empty() {
            return ExitCode::SUCCESS;
        }
        for f in stale {
            eprintln!(
                "meshctl: {} is stale; run `cargo xtask codegen`",
                dir.join(f).display()
            );
        }
        return ExitCode::FAILURE;
    }
    let Some(dir) = out else {
        for (_, yaml) in all {
            println!("---\n{yaml}");
        }
        return ExitCode::SUCCESS;
    };
    for (file, yaml) in all {
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(&file), yaml))
        {
            eprintln!("meshctl: writing {}: {e}", dir.join(file).display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `load_dir` reads directories; a single file is validated through a directory holding only it.
struct Dir(PathBuf, bool);

impl Drop for Dir {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tempdir_for(path: &std::path::Path) -> Dir {
    if path.is_dir() {
        return Dir(path.to_owned(), false);
    }
    let dir = std::env::temp_dir().join(format!("meshctl-validate-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let name = path.file_name().unwrap_or_default();
    if std::os::unix::fs::symlink(
        std::fs::canonicalize(path).unwrap_or(path.to_owned()),
        dir.join(name),
    )
    .is_err()
    {
        let _ = std::fs::copy(path, dir.join(name));
    }
    Dir(dir, true)
}

fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = http_get(admin, "/config_dump")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!(
        "node {}  ready: {}",
        v["node"].as_str().unwrap_or("?"),
        v["ready"]
    );
    for p in v["pods"].as_array().into_iter().flatten() {
        println!(
            "  {:<30} {:<16} hooks: {}{}",
            p["pod"].as_str().unwrap_or("?"),
            p["ip"].as_str().unwrap_or("?"),
            p["hooks"].as_array().map(|h| h.len()).unwrap_or(0),
            if p["adopted"] == true {
                " (adopted)"
            } else {
                ""
            }
        );
    }
    for (pod, err) in v["enrollment_errors"].as_object().into_iter().flatten() {
        println!("  {pod:<30} NOT ENROLLED: {}", err.as_str().unwrap_or(""));
    }
    println!("  kernel counters: {}", v["bpf"]["counters"]);
    Ok(())
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (_, body) = out.split_once("\r\n\r\n").unwrap_or(("", &out));
    Ok(body.to_owned())
}
