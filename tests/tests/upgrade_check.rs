//! `meshctl upgrade-check`: the new version's validator on the live configuration, before
//! anything is replaced. No root needed.

use std::process::Command;

use weft_tests::agent::sibling_bin;

fn meshctl() -> Command {
    Command::new(sibling_bin("meshctl"))
}

fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/mesh: enabled}}\n\
         ---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: bad, namespace: shop}\nspec: {action: MAYBE}\n",
    )
    .unwrap();
    dir
}

#[test]
fn the_same_version_rejects_nothing_new() {
    let dir = config_dir();
    let out = meshctl()
        .args(["upgrade-check", "--binary"])
        .arg(sibling_bin("meshctl"))
        .arg("-f")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("already rejected: ") && text.contains("spec.action"),
        "the object both versions reject is listed as such: {text}"
    );
    assert!(text.contains("0 object error(s) new"), "{text}");
}

#[test]
fn an_object_the_new_version_rejects_is_named_and_fails_the_check() {
    let dir = config_dir();
    // A stand-in for a newer meshctl whose validator also rejects the Namespace.
    let new = dir.path().join("new-meshctl");
    let current = sibling_bin("meshctl");
    std::fs::write(
        &new,
        format!(
            "#!/bin/sh\n{} \"$@\"\necho 'error: {}/mesh.yaml (document 0, Namespace shop): \
             metadata.labels: weft.dev/mesh is reserved'\necho '2 error(s); 0 pod(s) read'\nexit 1\n",
            current.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = meshctl()
        .args(["upgrade-check", "--binary"])
        .arg(&new)
        .arg("-f")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("REJECTED AFTER THE UPGRADE: ")
            && text.contains("Namespace shop): metadata.labels: weft.dev/mesh is reserved"),
        "{text}"
    );
    assert!(text.contains("1 object error(s) new"), "{text}");
}

#[test]
fn a_binary_that_does_not_validate_is_an_error_not_a_pass() {
    let dir = config_dir();
    let out = meshctl()
        .args(["upgrade-check", "--binary", "/bin/true", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not report on the configuration"), "{err}");
}
