//! The local trace viewer end to end (issue 15): the real `statecast-traces serve` receives
//! what the real `profile-api` and the four `profile-consumer` processes export over OTLP/gRPC
//! (as under `make dev`), and `statecast-traces show` prints the last write's trace as a tree
//! with the API's server span, the relay's `send user-events` under it and one
//! `process user-events` per consumer under that.
//!
//! The system is the one of `tests/trace.rs` (`System`): a private broker, a fresh database,
//! unique groups and free ports, so nothing collides with other tests or `make dev`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use statecast_system_tests::system::{System, SystemOptions};
use statecast_system_tests::{Service, binary, free_port, wait_http_ok};
use statecast_testkit as kit;

const HANDLERS: [&str; 4] = ["audit", "analytics", "email", "cache-refresh"];

/// `statecast-traces show ARGS` on `dir`: exit code and stdout (stderr on failure).
fn show(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(binary("statecast-traces").unwrap())
        .arg("show")
        .args(args)
        .env("TRACES_DIR", dir)
        .output()
        .unwrap();
    let text = if output.status.success() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    (output.status.code(), text)
}

/// One printed span: its text and the index of its parent line.
#[derive(Debug)]
struct Node {
    text: String,
    parent: Option<usize>,
}

/// The tree lines of `show`'s output (the header skipped), with parents from the indentation:
/// every level is four characters of `├── `, `└── `, `│   ` or spaces.
fn parse_tree(output: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut path: Vec<usize> = Vec::new(); // index of the latest node at each depth
    for line in output.lines().skip(1) {
        let text = line.trim_start_matches(['│', '├', '└', '─', ' ']);
        let depth = (line.chars().count() - text.chars().count()) / 4;
        path.truncate(depth);
        let parent = path.last().copied();
        assert_eq!(path.len(), depth, "bad indentation in {output}");
        nodes.push(Node {
            text: text.to_owned(),
            parent,
        });
        path.push(nodes.len() - 1);
    }
    nodes
}

fn descends_from(nodes: &[Node], mut index: usize, ancestor: usize) -> bool {
    while let Some(parent) = nodes[index].parent {
        if parent == ancestor {
            return true;
        }
        index = parent;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn show_prints_the_last_writes_trace_through_the_relay_into_every_consumer() {
    let dir = std::env::temp_dir().join(kit::unique("statecast-traces"));
    let port = free_port().unwrap();
    let logs = std::env::temp_dir().join(kit::unique("statecast-traces-log"));
    let _receiver = Service::start_with_args(
        &binary("statecast-traces").unwrap(),
        &["serve"],
        &[
            ("TRACES_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("TRACES_DIR", dir.display().to_string()),
        ],
        logs.with_extension("log"),
    )
    .unwrap();
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let system = System::start(SystemOptions {
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let (code, text) = show(&dir, &[]);
    assert_eq!(code, Some(1), "no write yet: {text}");
    assert!(
        text.contains("no write in the") || text.contains("no spans in"),
        "{text}"
    );

    let id = kit::unique("viewer").replace('-', "_");
    let client = reqwest::Client::new();
    let response = client
        .put(format!("{}/v1/profiles/{id}", system.api_url))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"name":"Viewer Test","email":"{id}@example.com","country":"PT"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    // A read after the write: "the last write" must not become this GET's trace.
    let read = client
        .get(format!("{}/v1/profiles/{id}", system.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let tree = loop {
        let (code, text) = show(&dir, &[]);
        let complete = code == Some(0)
            && HANDLERS.iter().all(|h| {
                text.contains(&format!(
                    "process user-events [profile-consumer-{h}, consumer]"
                ))
            });
        if complete {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace never showed every consumer within 60 s; last output:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("{tree}");

    let nodes = parse_tree(&tree);
    let roots: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].parent.is_none())
        .collect();
    assert_eq!(roots.len(), 1, "one root, every span linked: {tree}");
    let root = roots[0];
    assert!(
        nodes[root]
            .text
            .starts_with("PUT /v1/profiles/{id} [profile-api, server] "),
        "the root is the API's server span of the PUT: {tree}"
    );
    let sends: Vec<usize> = (0..nodes.len())
        .filter(|&i| {
            nodes[i]
                .text
                .starts_with("send user-events [profile-api, producer] ")
        })
        .collect();
    assert_eq!(sends.len(), 1, "{tree}");
    assert!(
        descends_from(&nodes, sends[0], root),
        "send user-events hangs under the server span: {tree}"
    );
    for handler in HANDLERS {
        let processes: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.text.starts_with(&format!(
                    "process user-events [profile-consumer-{handler}, consumer] "
                ))
            })
            .collect();
        assert_eq!(processes.len(), 1, "{handler}: {tree}");
        assert_eq!(
            processes[0].parent,
            Some(sends[0]),
            "{handler}'s process span is a child of the send span: {tree}"
        );
    }

    // The header names the trace; `show <id>` (and a prefix of it) prints that trace.
    let header = tree.lines().next().unwrap();
    let trace_id = header.split_whitespace().nth(1).unwrap();
    assert_eq!(trace_id.len(), 32, "{header}");
    for wanted in [trace_id, &trace_id[..12]] {
        let (code, by_id) = show(&dir, &[wanted]);
        assert_eq!(code, Some(0), "{by_id}");
        assert!(by_id.starts_with(&format!("trace {trace_id} ")), "{by_id}");
        assert!(
            by_id.contains("process user-events [profile-consumer-audit, consumer]"),
            "{by_id}"
        );
    }
    let (code, unknown) = show(&dir, &["ffffffffffffffffffffffffffffffff"]);
    assert_eq!(code, Some(1));
    assert!(unknown.contains("no trace ffff"), "{unknown}");
    let _ = std::fs::remove_dir_all(&dir);
}
