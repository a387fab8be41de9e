//! `install` copies the binary and the copy runs.

use std::process::Command;

#[test]
fn install_copies_a_runnable_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_ordinal-init"))
        .arg("install")
        .arg(dir.path())
        .status()
        .expect("run install");
    assert!(status.success());
    let installed = dir.path().join("ordinal-init");
    let out = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("run copy");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ordinal-init "));
    assert!(!dir.path().join(".ordinal-init.partial").exists());
}

#[test]
fn install_into_a_missing_directory_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_ordinal-init"))
        .arg("install")
        .arg(dir.path().join("missing"))
        .output()
        .expect("run install");
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("cannot copy"), "{log}");
}
