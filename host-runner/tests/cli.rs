//! The `host-runner` binary: help, startup errors, and a real serve run.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-runner"));
    c.env("RUST_BACKTRACE", "0");
    c
}

/// Kills the child when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_explains_the_serve_command() {
    let out = bin().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--filter",
        "--plugin-config",
        "--listen",
        "--admin",
        "--cluster",
        "--cluster-config",
        "--env",
        "--workers",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }
}

/// Run `serve` expecting it to fail at startup; a server that starts anyway is killed
/// after a while instead of hanging the test.
fn serve_error(args: &[&str]) -> String {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--no-admin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("host-runner {args:?} kept running instead of failing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn startup_errors_are_clear() {
    let err = serve_error(&["--filter", "/nonexistent/filter.wasm"]);
    assert!(
        err.contains("cannot read wasm module /nonexistent/filter.wasm"),
        "{err}"
    );

    let not_wasm =
        std::env::temp_dir().join(format!("host-runner-not-wasm-{}", std::process::id()));
    std::fs::write(&not_wasm, "hello").unwrap();
    let err = serve_error(&["--filter", not_wasm.to_str().unwrap()]);
    assert!(err.contains("invalid wasm module"), "{err}");

    let probe = guest("probe");
    let reject = std::env::temp_dir().join(format!("host-runner-reject-{}", std::process::id()));
    std::fs::write(&reject, "reject").unwrap();
    let err = serve_error(&[
        "--filter",
        probe.to_str().unwrap(),
        "--plugin-config",
        reject.to_str().unwrap(),
    ]);
    assert!(err.contains("rejected the plugin configuration"), "{err}");

    let err = serve_error(&["--filter", probe.to_str().unwrap(), "--cluster", "nonsense"]);
    assert!(err.contains("expected NAME=HOST:PORT"), "{err}");
}

#[tokio::test]
async fn serves_requests_and_forwards_named_environment() {
    let clusters =
        std::env::temp_dir().join(format!("host-runner-clusters-{}.yaml", std::process::id()));
    std::fs::write(
        &clusters,
        format!(
            "clusters:\n  - name: upstream\n    address: {}\n    request_timeout_ms: 5000\n",
            upstream()
        ),
    )
    .unwrap();
    let child = bin()
        .args(["serve", "--filter", guest("probe").to_str().unwrap()])
        .args(["--cluster-config", clusters.to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(["--env", "PROBE_SECRET"])
        .env("PROBE_SECRET", "from-the-host")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "host-runner: serving … on http://127.0.0.1:PORT (admin: …)"
    let addr: std::net::SocketAddr = line
        .split("on http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    assert!(line.contains("clusters: upstream="), "{line}");
    let r = get(addr, "/env", &[]).await;
    assert_eq!(r.body, "secret=from-the-host home=<unset> vars=1");
    let r = get(addr, "/headers", &[("x-target", "upstream")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("PUT /rewritten?q=1\n"));
}

/// `HOST_RUNNER_PERF_MAP=1` makes `serve` write a perf map naming the guest's compiled
/// functions (for `perf report`); without it, none is written.
#[test]
fn the_perf_map_is_written_only_when_asked() {
    for asked in [true, false] {
        let mut command = bin();
        command
            .args(["serve", "--filter", guest("probe").to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if asked {
            command.env("HOST_RUNNER_PERF_MAP", "1");
        } else {
            command.env_remove("HOST_RUNNER_PERF_MAP");
        }
        let mut child = Running(command.spawn().unwrap());
        // The banner comes once the module is compiled (and its map written).
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("serving"), "{line}");
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.0.id()));
        let text = std::fs::read_to_string(&map).unwrap_or_default();
        let _ = std::fs::remove_file(&map);
        if asked {
            assert!(
                text.lines().any(|l| l.contains("proxy_on_")),
                "no guest function in {map:?}: {}",
                &text[..text.len().min(500)]
            );
        } else {
            assert!(text.is_empty(), "a perf map was written unasked: {map:?}");
        }
    }
}
