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
    /// Before an upgrade: run the new version's validator (`--binary`, its meshctl) on the
    /// live configuration and list every object it would reject that this version accepts.
    /// Exit non-zero if there is one. In Kubernetes mode, export the objects first, e.g.
    /// `kubectl get namespaces,pods,services,endpointslices,authorizationpolicies.weft.dev,...
    /// -A -o yaml > live.yaml`.
    UpgradeCheck {
        /// The new version's meshctl.
        #[arg(long)]
        binary: PathBuf,
        /// A file or a directory of YAML documents (the live configuration).
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
    /// Show an agent: readiness, enrolled pods and their hooks, certificate health, rejected
    /// configuration.
    Status {
        /// Agents' admin addresses (each in its node's network namespace, e.g. through
        /// `kubectl port-forward`); repeat for several nodes.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: Vec<SocketAddr>,
        /// `json` prints the agent's whole /config_dump.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Print an agent's /config_dump (JSON).
    ConfigDump {
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Explain every decision on one path: enrollment and hooks, where the destination
    /// resolves, identities and certificates, the policy rule that decides, the transport.
    Explain {
        /// The source pod, NAMESPACE/POD.
        #[arg(long)]
        from: String,
        /// The destination, HOST:PORT (an IP, a Service name such as web.shop, or a DNS name).
        #[arg(long)]
        to: String,
        /// The admin address of the agent on the source pod's node.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// `json` for scripts.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
        /// An HTTP request to explain at L7: 'METHOD /path' (route, rule, backend, timeout,
        /// retry, and the L7 policy verdict for it).
        #[arg(long)]
        http: Option<String>,
        /// A request header for --http, 'name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { path } => validate(path),
        Command::UpgradeCheck { binary, path } => upgrade_check(&binary, &path),
        Command::Crds { out, check } => crds(out, check),
        Command::Status { admin, output } => {
            let json = output.as_deref() == Some("json");
            // Every agent is reported, reachable or not; the exit status says if one was not.
            let results: Vec<_> = admin.iter().map(|a| status(*a, json)).collect();
            let failed = results.into_iter().filter_map(Result::err).count();
            report(match failed {
                0 => Ok(()),
                n => Err(anyhow::anyhow!("{n} agent(s) did not answer")),
            })
        }
        Command::ConfigDump { admin } => {
            report(http_get(admin, "/config_dump").map(|body| println!("{body}")))
        }
        Command::Explain {
            from,
            to,
            admin,
            output,
            http,
            headers,
        } => match explain(
            admin,
            &Query {
                from: &from,
                to: &to,
                http: http.as_deref(),
                headers: &headers,
            },
            output.as_deref() == Some("json"),
        ) {
            // The exit status says the verdict, for scripts: 0 allowed, 1 denied or unknown.
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("meshctl: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the source's agent; prints the steps for people (or the JSON); true when allowed.
struct Query<'a> {
    from: &'a str,
    to: &'a str,
    http: Option<&'a str>,
    headers: &'a [String],
}

fn explain(admin: SocketAddr, q: &Query, json: bool) -> anyhow::Result<bool> {
    let mut path = format!("/debug/explain?from={}&to={}", encode(q.from), encode(q.to));
    if let Some(h) = q.http {
        path += &format!("&http={}", encode(h));
        for header in q.headers {
            path += &format!("&header={}", encode(header));
        }
    }
    let body = http_get(admin, &path)?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("the agent answered {body:?}: {e}"))?;
    let allowed = v["verdict"] == "allowed";
    if json {
        println!("{body}");
        return Ok(allowed);
    }
    println!("{} -> {}", q.from, q.to);
    for (i, step) in v["steps"].as_array().into_iter().flatten().enumerate() {
        let mark = if step["ok"] == true { "ok" } else { "!!" };
        println!(
            "{}. {:<11} [{mark}]",
            i + 1,
            step["step"].as_str().unwrap_or("?")
        );
        for line in step["lines"].as_array().into_iter().flatten() {
            println!("     {}", line.as_str().unwrap_or(""));
        }
    }
    println!("verdict: {}", v["verdict"].as_str().unwrap_or("unknown"));
    Ok(allowed)
}

/// Encodes a query value.
fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn validate(path: PathBuf) -> ExitCode {
    let loaded = load_dir(&path);
    for e in loaded.unreadable.iter().chain(&loaded.errors) {
        println!("error: {e}");
    }
    for i in &loaded.ignored {
        println!(
            "note: {} document(s) of kind {} not used ({}), first at {}",
            i.documents, i.kind, i.reason, i.first
        );
    }
    let state = &loaded.state;
    let errors = loaded.errors.len() + loaded.unreadable.len();
    println!(
        "{errors} error(s); {} pod(s), {} namespace(s), {} node(s) read",
        state.pods.len(),
        state.namespaces.len(),
        state.nodes.len()
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn upgrade_check(binary: &std::path::Path, path: &std::path::Path) -> ExitCode {
    use mesh_agent::upgrade::check;
    let new = match check::new_errors(binary, path) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("meshctl: {e}");
            return ExitCode::from(2);
        }
    };
    let c = check::Comparison::of(&check::current_errors(path), &new);
    for e in &c.newly_rejected {
        println!("REJECTED AFTER THE UPGRADE: {e}");
    }
    for e in &c.still_rejected {
        println!("already rejected: {e}");
    }
    for e in &c.accepted_now {
        println!("accepted after the upgrade: {e}");
    }
    println!(
        "{} object error(s) new with {}; {} already rejected; {} fixed",
        c.newly_rejected.len(),
        binary.display(),
        c.still_rejected.len(),
        c.accepted_now.len()
    );
    if c.newly_rejected.is_empty() {
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

fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = http_get(admin, "/config_dump").inspect_err(|e| {
        println!("agent at {admin}: UNREACHABLE ({e:#})");
    })?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let ready = if v["ready"] == true {
        "ready"
    } else {
        "NOT READY"
    };
    println!("node {}: agent {ready}", v["node"].as_str().unwrap_or("?"));
    let pods = v["pods"].as_array().cloned().unwrap_or_default();
    println!("enrolled pods: {}", pods.len());
    for p in &pods {
        println!(
            "  {:<30} {:<16} {:<45} hooks: {}{}",
            p["pod"].as_str().unwrap_or("?"),
            p["ip"].as_str().unwrap_or("?"),
            p["identity"].as_str().unwrap_or("?"),
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
    match v["certificates"].as_array() {
        None => println!("certificates: mTLS is off on this agent (no CA configured)"),
        Some(certs) => {
            println!("certificates: {}", certs.len());
            for c in certs {
                let health = match (c["expires_in_secs"].as_i64(), c["last_error"].as_str()) {
                    (None, e) => format!("NONE YET ({})", e.unwrap_or("requesting")),
                    (Some(t), _) if t <= 0 => "EXPIRED".to_owned(),
                    (Some(t), Some(e)) => format!("valid {t}s, renewal FAILING: {e}"),
                    (Some(t), None) => format!("valid, expires in {t}s"),
                };
                println!("  {:<50} {health}", c["identity"].as_str().unwrap_or("?"));
            }
        }
    }
    let unreadable = v["config_unreadable"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unreadable.is_empty() {
        println!(
            "UNREADABLE configuration ({}; last good kept):",
            unreadable.len()
        );
        for e in unreadable {
            println!(
                "  {}: {}",
                e["file"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("?")
            );
        }
    }
    let errors = v["config_errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        println!("rejected configuration ({}; last good kept):", errors.len());
        for e in errors {
            println!("  {}", config_error(&e));
        }
    }
    let ignored: Vec<String> = v["ignored_kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{} ({})", i["kind"].as_str().unwrap_or("?"), i["documents"]))
        .collect();
    if !ignored.is_empty() {
        println!(
            "not used (kinds Weft does not act on): {}",
            ignored.join(", ")
        );
    }
    println!("kernel counters: {}", v["bpf"]["counters"]);
    Ok(())
}

/// `file` document N, `field`: message — as the agent's log says it.
fn config_error(e: &serde_json::Value) -> String {
    format!(
        "{} document {}, {}: {}",
        e["file"].as_str().unwrap_or("?"),
        e["document"],
        e["field"]
            .as_str()
            .filter(|f| !f.is_empty())
            .unwrap_or("(document)"),
        e["message"].as_str().unwrap_or("?")
    )
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
