//! `wanmux-server keygen` and `pubkey` as a user runs them: `pubkey < FILE` prints the public
//! key that `keygen --out FILE` printed, and errors name the file without repeating a key.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn server(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wanmux-server");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wanmux-server ends")
}

#[test]
fn pubkey_prints_what_keygen_printed_and_errors_name_the_file() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("keys-cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("server.key");
    let key_arg = key.to_str().expect("utf-8 path");

    let made = server(&["keygen", "--out", key_arg], None);
    assert!(made.status.success(), "keygen failed: {made:?}");
    let printed = String::from_utf8(made.stdout).expect("utf-8");
    assert!(printed.starts_with("public_key = \""), "{printed}");

    let file = std::fs::read(&key).expect("key file");
    let derived = server(&["pubkey"], Some(&file));
    assert!(derived.status.success(), "pubkey failed: {derived:?}");
    assert_eq!(String::from_utf8(derived.stdout).expect("utf-8"), printed);

    // keygen never overwrites a key, and says which file it refused.
    let again = server(&["keygen", "--out", key_arg], None);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(key_arg),
        "the error does not name the file: {err}"
    );

    // Not a key: an error that does not repeat the input.
    let bad = server(&["pubkey"], Some(b"hunter2-is-not-a-key\n"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("pubkey: "), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the error repeats the input: {err}"
    );
}

#[cfg(unix)]
#[test]
fn check_warns_about_a_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("keys-mode");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("server.key");
    let made = server(&["keygen", "--out", key.to_str().expect("utf-8")], None);
    assert!(made.status.success(), "keygen failed: {made:?}");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 1\nprivate_key_file = \"server.key\"\n\
         allowed_clients = [\"wOGjwz3am2VQNpI6W7VTJY6i9D2ASX4mv4TGSgCoXxE=\"]\n\
         [[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:7\"\n",
    )
    .expect("write config");
    let check = || {
        server(
            &["check", "--config", config.to_str().expect("utf-8")],
            None,
        )
    };

    // keygen made it 0600: no warning.
    let quiet = check();
    assert!(quiet.status.success(), "{quiet:?}");
    assert_eq!(String::from_utf8_lossy(&quiet.stdout), "ok\n");
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");

    // Readable by everyone: still valid, with one warning naming the file, line and key.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let warned = check();
    assert!(warned.status.success(), "{warned:?}");
    assert_eq!(String::from_utf8_lossy(&warned.stdout), "ok\n");
    let err = String::from_utf8_lossy(&warned.stderr);
    let prefix = format!("warning: {}:4: server.private_key_file: ", config.display());
    assert!(
        err.starts_with(&prefix) && err.contains("mode 644") && err.lines().count() == 1,
        "not one warning starting with {prefix:?}:\n{err}"
    );
}
