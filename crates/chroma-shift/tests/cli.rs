//! The binary as ops run it: bad configs stop it with a clear message, logs are one JSON line
//! per request and never carry a secret, SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use shift_testkit::{http, Fault, FaultyBackend};

const BIN: &str = env!("CARGO_BIN_EXE_chroma-shift");

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("chroma-shift.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_bad_config_stops_the_process_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:8000\"\nadmin_listen = \"127.0.0.1:8000\"\n[backends.old]\nurl = \"http://a:1\"\n[backends.new]\nurl = \"http://b:1\"\n",
            "server.admin_listen",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8000\"\nadmin_listen = \"127.0.0.1:9100\"\n[backends.old]\nurl = \"http://a:1\"\n",
            "new",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8000\"\nadmin_listen = \"127.0.0.1:9100\"\n[backends.old]\nurl = \"http://a:1\"\n[backends.new]\nurl = \"http://b:1\"\n[backends.new.auth]\ntoken_env = \"CHROMA_SHIFT_TEST_UNSET_TOKEN\"\n",
            "CHROMA_SHIFT_TEST_UNSET_TOKEN",
        ),
        ("not toml at all [", "chroma-shift.toml"),
    ];
    for (text, needle) in cases {
        let path = write_config(&dir, text);
        for command in ["serve", "check-config"] {
            let output = Command::new(BIN)
                .args([command, "--config"])
                .arg(&path)
                .env_remove("CHROMA_SHIFT_TEST_UNSET_TOKEN")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
            assert!(
                stderr.contains(needle),
                "{command}: `{needle}` not in: {stderr}"
            );
        }
    }
    let output = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/chroma-shift.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/chroma-shift.toml"));
}

#[tokio::test]
async fn logs_carry_one_line_per_request_and_no_secret() -> anyhow::Result<()> {
    let backend = FaultyBackend::spawn(Fault::ok()).await?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [server.client_auth]\nenabled = true\ntokens_env = \"TEST_CLIENT_TOKENS\"\n\
             [backends.old]\nurl = \"{}\"\n[backends.old.auth]\ntoken_env = \"TEST_OLD_TOKEN\"\n\
             [backends.new]\nurl = \"http://127.0.0.1:10\"\n[log]\nformat = \"json\"\nlevel = \"trace\"\n\
             [state]\ndir = \"{}\"\n",
            backend.url(),
            dir.path().join("state").display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("TEST_CLIENT_TOKENS", "client-token-s3cr3t")
        .env("TEST_OLD_TOKEN", "backend-token-s3cr3t")
        .env("CHROMA_SHIFT_ADMIN_TOKEN", "admin-token-s3cr3t")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let err_reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let url = format!("http://127.0.0.1:{port}");
    // Ready when it answers (the bound only turns a hang into a failure); an early exit fails
    // at once.
    let started = std::time::Instant::now();
    loop {
        if http("GET", &format!("{url}/api/v2/heartbeat"), &[], "")
            .await
            .is_ok()
        {
            break;
        }
        if let Some(exit) = child.try_wait()? {
            panic!("the proxy exited at start: {exit}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the proxy did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client token opens the data plane; a wrong one is refused.
    for (path, credential, expected) in [
        (
            "/api/v2/tenants/default_tenant/databases/default_database/collections",
            ("authorization", "Bearer client-token-s3cr3t"),
            200,
        ),
        (
            "/api/v2/pre-flight-checks",
            ("x-chroma-token", "wrong-token-s3cr3t"),
            401,
        ),
    ] {
        let (status, _, _) = http("GET", &format!("{url}{path}"), &[credential], "").await?;
        assert_eq!(status, expected, "{path}");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let exit = child.wait()?;
    assert!(exit.success(), "SIGTERM did not exit cleanly: {exit}");
    let lines: Vec<String> = out_reader
        .join()
        .unwrap()
        .into_iter()
        .chain(err_reader.join().unwrap())
        .collect();
    let all = lines.join("\n");
    assert!(!all.contains("s3cr3t"), "a secret reached the logs");

    let access: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "chroma_shift::access")
        .collect();
    let list = access
        .iter()
        .find(|v| v["operation"] == "list_collections")
        .unwrap_or_else(|| panic!("no access line for list_collections in:\n{all}"));
    assert_eq!(list["status"], 200);
    assert_eq!(list["backend"], "old");
    assert_eq!(list["tenant"], "default_tenant");
    assert!(list["duration_ms"].is_number());
    let refused = access
        .iter()
        .find(|v| v["operation"] == "pre_flight_checks")
        .expect("pre_flight_checks line");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["backend"], "proxy");
    Ok(())
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef chroma-shift"),
        ("fish", "complete -c chroma-shift"),
    ] {
        let output = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in [
            "serve",
            "verify",
            "ctl",
            "finalize",
            "quickstart",
            "--watch",
        ] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let output = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
