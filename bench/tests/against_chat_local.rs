//! The load tool against a real chat-local: exact accounting at a scale CI
//! affords, in both of chat-local's store modes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// chat-local from the same build as this test (cargo builds the whole
/// workspace's binaries before running tests).
fn chat_local_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"));
    let binary = bench.with_file_name("chat-local");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p backend --bin chat-local` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

struct ChatLocal {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl ChatLocal {
    fn start(store: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(chat_local_binary())
            .args([
                "--addr",
                "127.0.0.1:0",
                "--rate-limit",
                "0",
                "--max-http-connections-per-ip",
                "0",
                "--max-connections-per-ip",
                "0",
                "--store",
                store,
            ])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--dist")
            .arg(data.path())
            .env("RUST_LOG", "warn,chat_local=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chat-local starts");
        let (ready, address) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ready on http://") {
                    let _ = ready.send(line[at + "ready on http://".len()..].trim().to_owned());
                }
            }
        });
        let addr = address
            .recv_timeout(Duration::from_secs(60))
            .expect("chat-local reports its address");
        Self {
            child,
            url: format!("ws://{addr}/ws"),
            _data: data,
        }
    }

    /// Runs chat-bench against this server; its exit status and JSON report.
    fn bench(&self, mode: &[&str]) -> (bool, Value) {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args([
                "--url",
                &self.url,
                "--server-pid",
                &self.child.id().to_string(),
                "--json",
            ])
            .args(mode)
            .stderr(Stdio::inherit())
            .output()
            .expect("chat-bench runs");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let report = stdout.lines().last().expect("a JSON report");
        (
            output.status.success(),
            serde_json::from_str(report).expect("JSON"),
        )
    }
}

impl Drop for ChatLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_exact(ok: bool, report: &Value, expected: u64) {
    assert_eq!(report["expected"], expected, "{report}");
    assert_eq!(report["delivered"], expected, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["cross_room"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(ok, "chat-bench reported a fault: {report}");
    assert!(report["server"]["cpu_s"].as_f64().is_some(), "{report}");
}

#[test]
fn every_message_reaches_exactly_its_room_with_memberships_in_memory() {
    let server = ChatLocal::start("memory");
    let (ok, report) = server.bench(&[
        "chat",
        "--rooms",
        "20",
        "--clients",
        "10",
        "--messages",
        "20",
    ]);
    assert_exact(ok, &report, 20 * 10 * 20 * 10);
}

#[test]
fn every_message_reaches_exactly_its_room_with_memberships_in_dynamodb() {
    let server = ChatLocal::start("dynamodb");
    let (ok, report) =
        server.bench(&["chat", "--rooms", "5", "--clients", "6", "--messages", "10"]);
    assert_exact(ok, &report, 5 * 6 * 10 * 6);
}

#[test]
fn paced_senders_are_counted_exactly_too() {
    let server = ChatLocal::start("memory");
    let (ok, report) = server.bench(&[
        "chat",
        "--rooms",
        "3",
        "--clients",
        "4",
        "--messages",
        "10",
        "--rate",
        "50",
        "--size",
        "300",
    ]);
    assert_exact(ok, &report, 3 * 4 * 10 * 4);
}

#[test]
fn a_join_and_disconnect_storm_leaves_the_server_quiet() {
    let server = ChatLocal::start("memory");
    let (ok, report) = server.bench(&[
        "--concurrency",
        "50",
        "storm",
        "--rooms",
        "5",
        "--clients",
        "40",
    ]);
    assert!(ok, "{report}");
    assert_eq!(report["connections"], 200);
    assert!(report["quiet_after_drop_s"].as_f64().is_some(), "{report}");
    // The server still serves a whole chat afterwards.
    let (ok, report) = server.bench(&["chat", "--rooms", "2", "--clients", "3", "--messages", "5"]);
    assert_exact(ok, &report, 2 * 3 * 5 * 3);
}

#[test]
fn a_soak_with_churn_loses_nothing_and_gives_its_memory_back() {
    let server = ChatLocal::start("memory");
    let (ok, report) = server.bench(&[
        "soak",
        "--rooms",
        "5",
        "--clients",
        "4",
        "--seconds",
        "4",
        "--rate",
        "5",
        "--churners",
        "6",
        // A few seconds' run: the engine's caches still grow.
        "--memory-slack",
        "25",
    ]);
    assert!(ok, "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["cross_room"], 0, "{report}");
    let churn = &report["churn"];
    assert!(churn["visits"].as_u64().unwrap() > 6, "{report}");
    assert_eq!(churn["cross_room"], 0, "{report}");
    assert_eq!(churn["duplicates"], 0, "{report}");
    assert!(report["server"]["rss_ratio"].as_f64().is_some(), "{report}");
}

#[test]
fn shutdown_under_load_finishes_within_its_grace_period() {
    let mut server = ChatLocal::start("memory");
    // A heavy chat in full flow, and a join storm's worth of sockets.
    let load = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--url", &server.url, "--timeout", "30"])
        .args([
            "chat",
            "--rooms",
            "20",
            "--clients",
            "20",
            "--messages",
            "100000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat-bench runs");
    let mut load = Guard(load);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        load.0.try_wait().unwrap().is_none(),
        "the load was still running when SIGTERM came"
    );
    let started = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let exited = loop {
        if let Ok(Some(_)) = server.child.try_wait() {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = load.0.kill();
    let took = exited.expect("chat-local exits under load");
    // 5 s of grace for the sockets and 5 s for HTTP requests at most.
    assert!(took < Duration::from_secs(11), "{took:?}");
    eprintln!("exited {took:?} after SIGTERM under load");
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
