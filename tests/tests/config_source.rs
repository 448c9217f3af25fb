//! The file source on bad days, end to end: configuration that cannot be read keeps the last
//! good state (pods stay enrolled, traffic flows) and is reported; a file too costly to parse is
//! refused with its reason while the agent keeps answering. Run as root (`cargo xtask test`).

use std::time::{Duration, Instant};

use weft_tests::{eventually, features, Client, OneNode};

fn captured(r: &weft_tests::ConnectResult) -> bool {
    // A captured connect was rewritten to 127.0.0.1:15001: the socket got a loopback source.
    r.local().ip().is_loopback()
}

#[test]
fn an_unreadable_config_dir_keeps_pods_enrolled_and_traffic_flowing() {
    if !features::require(
        "an_unreadable_config_dir_keeps_pods_enrolled_and_traffic_flowing",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = OneNode::new(&[8080]);
    let mut client = Client::start(&mut m.topo, &m.client);
    let dst = m.server.addr(8080);
    let before = client.connect(dst, 4096);
    assert!(before.intact() && captured(&before), "{:?}", before.raw);

    // The directory is replaced by a file (as a vanished mount or a botched deploy leaves it):
    // root reads past permissions, not past this.
    let dir = m.topo.config_dir();
    let away = m.topo.dir.join("config.away");
    std::fs::rename(&dir, &away).expect("move the config dir away");
    std::fs::write(&dir, "not a directory\n").expect("a file in its place");

    let ready = eventually(
        "the read error in /healthz/ready",
        Duration::from_secs(10),
        || {
            let (code, body) = m.agent.get("/healthz/ready").ok()?;
            body.contains("not a directory").then_some((code, body))
        },
    );
    assert_eq!(
        ready.0, 200,
        "still serving the last good state: {}",
        ready.1
    );
    assert!(
        ready
            .1
            .contains(&format!("configuration: {}", dir.display())),
        "{}",
        ready.1
    );
    let dump = m.agent.config_dump();
    let unreadable = &dump["config_unreadable"][0];
    assert_eq!(unreadable["file"], dir.display().to_string(), "{dump:#}");
    assert!(
        unreadable["message"]
            .as_str()
            .is_some_and(|m| m.contains("stays in force")),
        "{unreadable}"
    );
    assert!(
        m.agent.enrolled(&m.client).is_some(),
        "the pod was released on a read error: {:#}",
        dump["pods"]
    );
    let (_, status) = m.agent.meshctl(&["status"]);
    assert!(
        status.contains("UNREADABLE configuration (1; last good kept)")
            && status.contains("not a directory"),
        "{status}"
    );
    let during = client.connect(dst, 64 << 10);
    assert!(during.intact() && captured(&during), "{:?}", during.raw);

    // Back: the error clears, and the pod never left.
    std::fs::remove_file(&dir).expect("remove the file");
    std::fs::rename(&away, &dir).expect("restore the config dir");
    eventually("the read error to clear", Duration::from_secs(10), || {
        let dump = m.agent.config_dump();
        dump["config_unreadable"]
            .as_array()
            .is_some_and(|u| u.is_empty())
            .then_some(())
    });
    assert!(m.agent.enrolled(&m.client).is_some());
    assert!(
        !m.agent.log().contains("released"),
        "a pod was released meanwhile:\n{}",
        m.agent.log()
    );
}

#[test]
fn a_file_too_deep_to_parse_is_refused_while_the_agent_keeps_serving() {
    if !features::require(
        "a_file_too_deep_to_parse_is_refused_while_the_agent_keeps_serving",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = OneNode::new(&[8080]);
    let mut client = Client::start(&mut m.topo, &m.client);
    let dst = m.server.addr(8080);

    // 200 KB of nested `[`: libyaml's scanner once spent a minute of a runtime thread on it.
    let start = Instant::now();
    m.topo.apply(
        "deep",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\ndata: {}\n",
            "[".repeat(200_000)
        ),
    );
    let error = eventually(
        "the deep file to be refused",
        Duration::from_secs(5),
        || {
            let dump = m.agent.config_dump();
            dump["config_errors"]
                .as_array()?
                .iter()
                .find(|e| e["file"].as_str().is_some_and(|f| f.ends_with("deep.yaml")))
                .cloned()
        },
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("nested deeper than 64 at line 4")),
        "{error}"
    );
    let asked = Instant::now();
    let (code, _) = m.agent.get("/healthz/ready").expect("admin answers");
    assert_eq!(code, 200);
    assert!(asked.elapsed() < Duration::from_secs(1));
    let r = client.connect(dst, 4096);
    assert!(r.intact() && captured(&r), "{:?}", r.raw);
    assert!(m.agent.enrolled(&m.client).is_some());
}

/// `meshctl validate -f FILE` reads FILE itself (it used to report "0 error(s); 0 pod(s)" for
/// any file), through a symlink too, and exits non-zero on what the agent would reject.
#[test]
fn meshctl_validate_reads_the_file_it_is_given() {
    let dir = std::env::temp_dir().join(format!("weft-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("pod.yaml");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
               spec: {nodeName: n1}\nstatus: {podIP: 10.0.1.2}\n";
    std::fs::write(&good, pod).expect("write");
    let link = dir.join("link.yaml");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, pod.replace("10.0.1.2", "ten")).expect("write");
    let validate = |path: &std::path::Path| {
        let out = std::process::Command::new(weft_tests::agent::sibling_bin("meshctl"))
            .args(["validate", "-f"])
            .arg(path)
            .output()
            .expect("run meshctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for path in [&good, &link] {
        let (code, out) = validate(path);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("0 error(s); 1 pod(s)"), "{out}");
    }
    let (code, out) = validate(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "error: {}: document 1: status.podIP",
            bad.display()
        )),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config dir is a mounted volume (reached through a symlink, as a ConfigMap's files are);
/// the volume is unmounted. What is left is an empty directory on another device: the agent
/// keeps the last good configuration and says why, instead of releasing every pod.
#[test]
fn an_unmounted_config_volume_keeps_pods_enrolled() {
    if !features::require(
        "an_unmounted_config_volume_keeps_pods_enrolled",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = OneNode::new(&[8080]);
    let mut client = Client::start(&mut m.topo, &m.client);
    let dst = m.server.addr(8080);

    let dir = m.topo.config_dir();
    let volume = m.topo.dir.join("volume");
    std::fs::create_dir(&volume).expect("mount point");
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        let ok = std::process::Command::new(cmd)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{cmd} {args:?}");
    };
    run(
        "mount",
        &[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "weft-test".as_ref(),
            volume.as_os_str(),
        ],
    );
    let _unmount = Unmount(volume.clone());
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, volume.join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        volume.join("marker.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: marker}\n",
    )
    .expect("marker");
    // Swap the directory for a link to the volume, atomically.
    let link = m.topo.dir.join("config.link");
    std::os::unix::fs::symlink(&volume, &link).expect("symlink");
    let old = m.topo.dir.join("config.old");
    std::fs::rename(&dir, &old).expect("move the dir");
    std::fs::rename(&link, &dir).expect("the link in its place");
    // Wait until the agent has read the volume (its marker, of a kind Weft does not use, is
    // listed in /config_dump).
    eventually("the volume read", Duration::from_secs(10), || {
        let dump = m.agent.config_dump();
        let kinds = dump["ignored_kinds"].as_array()?.clone();
        kinds
            .iter()
            .any(|k| k["kind"] == "v1 ConfigMap")
            .then_some(())
    });
    m.agent.wait_enrolled(&m.client);
    let (_, status) = m.agent.meshctl(&["status"]);
    assert!(
        status.contains("not used (kinds Weft does not act on): v1 ConfigMap (1)"),
        "{status}"
    );

    run("umount", &[volume.as_os_str()]);
    let dump = eventually("the unmount reported", Duration::from_secs(10), || {
        let dump = m.agent.config_dump();
        let msg = dump["config_unreadable"][0]["message"].as_str()?.to_owned();
        msg.contains("another file system").then_some(dump)
    });
    assert!(
        m.agent.enrolled(&m.client).is_some(),
        "the pod was released when the volume went: {:#}",
        dump["pods"]
    );
    let r = client.connect(dst, 64 << 10);
    assert!(r.intact() && captured(&r), "{:?}", r.raw);
    assert!(!m.agent.log().contains("released"), "{}", m.agent.log());
}

/// Unmounts on the way out, whatever happened.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}
