//! `weft-cni install`: what the DaemonSet's init container runs on each node, as istio-cni's
//! install-cni does. Copies the plugin into the node's CNI bin dir, then chains it at the end of
//! the `plugins` of the network configuration the runtime uses (the first file of the conf dir
//! by name, as libcni picks it). Idempotent: run again, it replaces its own entry and leaves
//! every other plugin as it was. `weft-cni uninstall` takes both out again.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

/// The plugin's `type` in a conflist, and its file name in the bin dir.
pub const PLUGIN_TYPE: &str = "weft-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "no CNI network configuration (*.conflist) in {0}: is the cluster's CNI installed on \
         this node yet?"
    )]
    NoConfig(PathBuf),
    #[error(
        "{0} is the network configuration the runtime uses, and it is a single-plugin file; \
         weft-cni can only be chained in a .conflist (convert it to one with a \"plugins\" list)"
    )]
    NotAList(PathBuf),
    #[error("{} is not a valid CNI conflist: {why}; left unchanged", path.display())]
    Malformed { path: PathBuf, why: String },
}

/// What `install` is given.
#[derive(Debug, Clone)]
pub struct Install {
    /// The binary to install (the running weft-cni).
    pub source: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// weft-cni's own fields in its conflist entry (agent_socket, timeout_seconds, …).
    pub settings: Map<String, Value>,
}

/// What install did, for its log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub conflist: PathBuf,
    pub binary: PathBuf,
    pub conflist_changed: bool,
    pub binary_changed: bool,
}

pub fn install(i: &Install) -> Result<Installed, InstallError> {
    let binary = i.bin_dir.join(PLUGIN_TYPE);
    // The binary first: a conflist entry must never name a plugin that is not there yet.
    let binary_changed = copy_binary(&i.source, &binary)?;
    let conflist = network_config(&i.conf_dir)?;
    let text = read(&conflist)?;
    let mut entry = i.settings.clone();
    entry.insert("type".into(), PLUGIN_TYPE.into());
    let new = chain(&text, Value::Object(entry)).map_err(|why| InstallError::Malformed {
        path: conflist.clone(),
        why,
    })?;
    let conflist_changed = match new {
        Some(new) => {
            write_atomic(&conflist, new.as_bytes())?;
            true
        }
        None => false,
    };
    Ok(Installed {
        conflist,
        binary,
        conflist_changed,
        binary_changed,
    })
}

/// Takes weft-cni out of the conflist, then removes the binary.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<(), InstallError> {
    if let Ok(conflist) = network_config(conf_dir) {
        let text = read(&conflist)?;
        let new = unchain(&text).map_err(|why| InstallError::Malformed {
            path: conflist.clone(),
            why,
        })?;
        if let Some(new) = new {
            write_atomic(&conflist, new.as_bytes())?;
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&binary) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(InstallError::Io {
            what: "removing",
            path: binary,
            error: e,
        }),
        _ => Ok(()),
    }
}

/// The file the runtime reads: the first `*.conf`, `*.conflist` or `*.json` by name (libcni's
/// order). Only a conflist can take a chained plugin.
pub fn network_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let entries = std::fs::read_dir(conf_dir).map_err(|error| InstallError::Io {
        what: "reading the CNI conf dir",
        path: conf_dir.to_owned(),
        error,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x == "conf" || x == "conflist" || x == "json")
        })
        .collect();
    files.sort();
    let first = files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.to_owned()))?;
    if first.extension().is_some_and(|x| x == "conflist") {
        Ok(first)
    } else {
        Err(InstallError::NotAList(first))
    }
}

/// The conflist with `entry` as its last plugin, replacing any earlier weft-cni entry; None
/// when it already is so (nothing to write).
pub fn chain(text: &str, entry: Value) -> Result<Option<String>, String> {
    edit(text, |plugins| {
        plugins.retain(|p| !is_weft(p));
        plugins.push(entry);
    })
}

/// The conflist without weft-cni; None when it had none.
pub fn unchain(text: &str) -> Result<Option<String>, String> {
    edit(text, |plugins| plugins.retain(|p| !is_weft(p)))
}

fn is_weft(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn edit(text: &str, f: impl FnOnce(&mut Vec<Value>)) -> Result<Option<String>, String> {
    let mut conf: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let Some(obj) = conf.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    let plugins = match obj.get_mut("plugins") {
        Some(Value::Array(p)) => p,
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => return Err("no \"plugins\" list".into()),
    };
    if let Some(i) = plugins
        .iter()
        .position(|p| p.get("type").and_then(Value::as_str).is_none())
    {
        return Err(format!("plugins[{i}] has no \"type\""));
    }
    let before = plugins.clone();
    f(plugins);
    if *plugins == before {
        return Ok(None);
    }
    let mut out = serde_json::to_string_pretty(&conf).expect("a Value serializes");
    out.push('\n');
    Ok(Some(out))
}

fn read(path: &Path) -> Result<String, InstallError> {
    std::fs::read_to_string(path).map_err(|error| InstallError::Io {
        what: "reading",
        path: path.to_owned(),
        error,
    })
}

/// Copies the binary unless the same bytes are there; returns whether it wrote.
fn copy_binary(source: &Path, dest: &Path) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = std::fs::read(source).map_err(|error| InstallError::Io {
        what: "reading",
        path: source.to_owned(),
        error,
    })?;
    if std::fs::read(dest).ok().as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    write_atomic(dest, &bytes)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(|error| {
        InstallError::Io {
            what: "making executable",
            path: dest.to_owned(),
            error,
        }
    })?;
    Ok(true)
}

/// Write beside, then rename: the runtime reads either the old file or the new one, never half
/// of one. The temporary name has no extension libcni reads.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.weft-tmp"));
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |error| InstallError::Io { what, path, error }
    };
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(io("setting permissions of", &tmp))?;
    std::fs::rename(&tmp, dest).map_err(io("renaming into place", dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}"#;

    fn entry(timeout: f64) -> Value {
        json!({"type": PLUGIN_TYPE, "agent_socket": "/var/lib/weft/cni.sock", "timeout_seconds": timeout})
    }

    fn plugins(text: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(text).unwrap()["plugins"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn chains_at_the_end_keeping_every_other_plugin_and_is_idempotent() {
        let once = chain(CALICO, entry(30.0)).unwrap().expect("changed");
        let p = plugins(&once);
        assert_eq!(p.len(), 3);
        assert_eq!(
            &p[..2],
            &plugins(CALICO)[..],
            "the cluster's plugins, as they were"
        );
        assert_eq!(p[2], entry(30.0));
        let v: Value = serde_json::from_str(&once).unwrap();
        assert_eq!(
            (v["name"].as_str(), v["cniVersion"].as_str()),
            (Some("k8s-pod-network"), Some("0.3.1"))
        );
        assert_eq!(
            chain(&once, entry(30.0)).unwrap(),
            None,
            "nothing to do the second time"
        );
        // New settings replace the entry, still once and still last.
        let again = chain(&once, entry(10.0)).unwrap().expect("changed");
        let p = plugins(&again);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], entry(10.0));
        // An entry that is not last (another tool appended after it) moves to the end.
        let mut v: Value = serde_json::from_str(&again).unwrap();
        v["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bandwidth"}));
        let moved = chain(&v.to_string(), entry(10.0))
            .unwrap()
            .expect("changed");
        let p = plugins(&moved);
        assert_eq!(
            (p.len(), p[2]["type"].as_str(), p[3].clone()),
            (4, Some("bandwidth"), entry(10.0))
        );
        assert_eq!(plugins(&unchain(&moved).unwrap().unwrap()).len(), 3);
        assert_eq!(unchain(CALICO).unwrap(), None);
    }

    #[test]
    fn refuses_what_is_not_a_conflist() {
        for (text, why) in [
            ("{\"plugins\": [", "not JSON"),
            ("[]", "not a JSON object"),
            ("{\"name\": \"x\"}", "no \"plugins\" list"),
            ("{\"plugins\": {}}", "not a list"),
            (
                "{\"plugins\": [{\"type\": \"bridge\"}, {\"name\": \"x\"}]}",
                "plugins[1] has no \"type\"",
            ),
        ] {
            let e = chain(text, entry(30.0)).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    fn dirs() -> (tempfile::TempDir, Install) {
        let root = tempfile::tempdir().unwrap();
        for d in ["bin", "net.d"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        let source = root.path().join("weft-cni-build");
        std::fs::write(&source, b"\x7fELF plugin").unwrap();
        let i = Install {
            source,
            bin_dir: root.path().join("bin"),
            conf_dir: root.path().join("net.d"),
            settings: entry(30.0).as_object().unwrap().clone(),
        };
        (root, i)
    }

    #[test]
    fn installs_into_the_file_the_runtime_reads() {
        let (_root, i) = dirs();
        assert!(matches!(install(&i), Err(InstallError::NoConfig(_))));
        std::fs::write(i.conf_dir.join("10-calico.conflist"), CALICO).unwrap();
        std::fs::write(i.conf_dir.join("99-other.conflist"), CALICO).unwrap();
        std::fs::write(i.conf_dir.join("calico-kubeconfig"), "not a config").unwrap();
        let done = install(&i).unwrap();
        assert_eq!(done.conflist, i.conf_dir.join("10-calico.conflist"));
        assert!(!done.binary_changed, "copied by the first try already");
        assert!(done.conflist_changed);
        assert_eq!(std::fs::read(&done.binary).unwrap(), b"\x7fELF plugin");
        let again = install(&i).unwrap();
        assert!(
            !again.binary_changed && !again.conflist_changed,
            "idempotent"
        );
        assert_eq!(
            std::fs::read_to_string(i.conf_dir.join("99-other.conflist")).unwrap(),
            CALICO,
            "other files untouched"
        );
        let names: Vec<_> = std::fs::read_dir(&i.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
        uninstall(&i.bin_dir, &i.conf_dir).unwrap();
        assert!(!done.binary.exists());
        assert_eq!(
            plugins(&std::fs::read_to_string(&done.conflist).unwrap()),
            plugins(CALICO)
        );
        uninstall(&i.bin_dir, &i.conf_dir).unwrap();
    }

    #[test]
    fn a_malformed_or_single_plugin_config_is_left_alone_with_a_message() {
        let (_root, i) = dirs();
        let broken = i.conf_dir.join("10-broken.conflist");
        std::fs::write(&broken, "{\"plugins\": [").unwrap();
        let e = install(&i).unwrap_err().to_string();
        assert!(
            e.contains("10-broken.conflist is not a valid CNI conflist")
                && e.contains("left unchanged"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&broken).unwrap(), "{\"plugins\": [");
        std::fs::write(i.conf_dir.join("05-bridge.conf"), "{\"type\": \"bridge\"}").unwrap();
        let e = install(&i).unwrap_err().to_string();
        assert!(
            e.contains("05-bridge.conf") && e.contains("single-plugin"),
            "{e}"
        );
    }
}
