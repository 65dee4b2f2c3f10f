//! docs/api.yaml against the real API (issue 9, item 1). Every documented
//! operation is called on real agents (a 3-node cluster, and a lone agent
//! before any commit), on its success and its error paths, and every
//! answer is checked against the document: the status is listed for the
//! operation, the content type is one it names, a JSON body validates
//! against its schema (`support::openapi`), and an error body is an
//! `ApiError` whose code the document lists. `/v1/events` is read as a
//! stream while the test makes events of every kind it can, and each
//! event validates as `ApiEvent`. The converse holds too: every path the
//! agent serves (among the path literals of `src/api` and `src/cli`) is in
//! the document, every method a documented path does not list answers
//! 405, and every documented operation was called.

mod cluster;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use cluster::{node, Cluster, WAIT};
use support::agents::{Agent, Config};
use support::openapi::{Answer, Document};
use support::{addr, free_port, request, wait_until_or, Reply};

const CALL: Duration = Duration::from_secs(30);
const JSON: &str = "Content-Type: application/json";

/// The document, and what the test has checked against it.
struct Api {
    doc: Document,
    /// (path, method, status) of every checked answer.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
    /// The kinds of the events read from `/v1/events`.
    kinds: Mutex<BTreeSet<String>>,
}

impl Api {
    fn load() -> Api {
        Api {
            doc: Document::load(&docs_api()),
            seen: Mutex::default(),
            kinds: Mutex::default(),
        }
    }

    /// Sends a request with the tests' token and checks the answer.
    fn call(
        &self,
        node: SocketAddr,
        method: &str,
        target: &str,
        headers: &[&str],
        body: &str,
    ) -> Reply {
        self.call_as(node, method, target, headers, body, true)
    }

    fn call_as(
        &self,
        node: SocketAddr,
        method: &str,
        target: &str,
        headers: &[&str],
        body: &str,
        authorized: bool,
    ) -> Reply {
        let reply = request(node, method, target, headers, body, authorized, CALL)
            .unwrap_or_else(|| panic!("{method} {target} on {node}: no answer"));
        self.check(method, target, &reply);
        reply
    }

    /// The answer to `method target` validates against the document.
    fn check(&self, method: &str, target: &str, reply: &Reply) {
        let path = target.split('?').next().unwrap_or(target);
        let answer = Answer {
            status: reply.status,
            headers: &reply.headers,
            body: &reply.body,
        };
        if let Err(e) = self.doc.check(path, method, &answer) {
            panic!("{method} {target} -> {}: {e}", reply.status);
        }
        if reply.status >= 400 {
            self.check_error(method, path, reply);
        }
        self.seen.lock().unwrap().insert((
            path.to_string(),
            method.to_ascii_lowercase(),
            reply.status,
        ));
    }

    /// An error body is an `ApiError` with a documented code, but for the
    /// two operations whose errors are richer: an apply's result (`PUT
    /// /v1/topology` 409/422) and the health report (503).
    fn check_error(&self, method: &str, path: &str, reply: &Reply) {
        let method = method.to_ascii_lowercase();
        let richer = [
            ("put", "/v1/topology", 409),
            ("put", "/v1/topology", 422),
            ("get", "/v1/health", 503),
        ];
        if method == "head" && path == "/v1/health" {
            return; // no body: the document says so, and it was checked
        }
        if richer.contains(&(method.as_str(), path, reply.status)) {
            let body: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            assert!(
                body["message"].is_string(),
                "{method} {path} -> {}: no message in {}",
                reply.status,
                reply.body
            );
            return;
        }
        self.assert_api_error(&format!("{} {path}", method.to_uppercase()), reply);
    }

    fn assert_api_error(&self, what: &str, reply: &Reply) {
        let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
            panic!("{what} -> {}: not JSON ({e}): {}", reply.status, reply.body)
        });
        let schema = json!({ "$ref": "#/components/schemas/ApiError" });
        let problems = self.doc.validate(&schema, &body);
        assert!(
            problems.is_empty(),
            "{what} -> {}: not an ApiError: {problems:?}",
            reply.status
        );
        let codes =
            &self.doc.doc["components"]["schemas"]["ApiError"]["properties"]["code"]["enum"];
        assert!(
            codes.as_array().is_some_and(|c| c.contains(&body["code"])),
            "{what}: code {} is not in ApiError's list {codes}",
            body["code"]
        );
    }

    /// `method target` answers `status`; its JSON body.
    fn expect(
        &self,
        node: SocketAddr,
        method: &str,
        target: &str,
        body: &str,
        status: u16,
    ) -> Value {
        let headers: &[&str] = if body.is_empty() { &[] } else { &[JSON] };
        let reply = self.call(node, method, target, headers, body);
        assert_eq!(
            reply.status, status,
            "{method} {target} answered {}: {}",
            reply.status, reply.body
        );
        serde_json::from_str(&reply.body).unwrap_or(Value::Null)
    }

    fn get(&self, node: SocketAddr, target: &str) -> Value {
        self.expect(node, "GET", target, "", 200)
    }

    /// `PUT /v1/topology` with `text`: the status and the `ApplyResult`.
    fn put_topology(&self, node: SocketAddr, query: &str, text: &str) -> (u16, Value) {
        let target = format!("/v1/topology{query}");
        let reply = self.call(node, "PUT", &target, &["Content-Type: text/plain"], text);
        (
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(Value::Null),
        )
    }

    /// Checks an answer against a reusable response of the document
    /// (`components/responses/NAME`): the fallbacks, which belong to no
    /// path.
    fn check_component(&self, name: &str, what: &str, reply: &Reply) {
        let response = &self.doc.doc["components"]["responses"][name];
        assert!(response.is_object(), "the document has no response {name}");
        let answer = Answer {
            status: reply.status,
            headers: &reply.headers,
            body: &reply.body,
        };
        if let Err(e) = self.doc.check_response(response, &answer) {
            panic!("{what} -> {}: {e}", reply.status);
        }
        self.assert_api_error(what, reply);
    }

    fn saw_kind(&self, kind: &str) {
        self.kinds.lock().unwrap().insert(kind.to_string());
    }
}

fn docs_api() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.yaml")
}

/// An open `GET /v1/events`: its events, each checked as it arrives.
struct Events {
    stream: TcpStream,
    events: mpsc::Receiver<(String, String)>,
}

impl Events {
    fn open(api: &Api, node: SocketAddr) -> Events {
        let mut stream = TcpStream::connect_timeout(&node, Duration::from_secs(2)).unwrap();
        write!(
            stream,
            "GET /v1/events HTTP/1.0\r\nHost: {node}\r\n{}Accept: text/event-stream\r\n\r\n",
            support::bearer()
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let reply = Reply {
            status: status.split_whitespace().nth(1).unwrap().parse().unwrap(),
            headers,
            body: String::new(),
        };
        api.check("GET", "/v1/events", &reply);
        assert_eq!(reply.status, 200);
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut name, mut data) = (String::new(), String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() && tx.send((name.clone(), data.clone())).is_err() {
                        return;
                    }
                    name.clear();
                    data.clear();
                } else if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
        });
        Events { stream, events }
    }

    /// Reads events until one satisfies `want`, checking each against
    /// `ApiEvent` on the way.
    fn wait_for(&self, api: &Api, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((name, data)) = self.events.recv_timeout(left) else {
                panic!("no event {what} within {WAIT:?}; the last ones: {last:#?}");
            };
            let event: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("an event's data is not JSON ({e}): {data}"));
            let problems = api
                .doc
                .validate(&json!({ "$ref": "#/components/schemas/ApiEvent" }), &event);
            assert!(problems.is_empty(), "event {data}: {problems:?}");
            assert_eq!(
                event["kind"],
                name.as_str(),
                "the SSE event name is the kind"
            );
            api.saw_kind(&name);
            if want(&event) {
                return event;
            }
            last.push(data);
            if last.len() > 20 {
                last.remove(0);
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[test]
fn every_endpoint_answers_as_the_document_says() {
    let api = Api::load();
    lone_agent(&api);

    let cluster = Cluster::start(
        &[
            node("n1", "s1", "candidate"),
            node("n2", "s1", "candidate"),
            node("n3", "s2", "voter"),
        ],
        &[("s2", 2.0)],
    );
    cluster.wait_masters(&["s1", "s2"]);
    let n1 = cluster.nodes[0].api();
    let events = Events::open(&api, n1);

    reads(&api, &cluster);
    request_errors(&api, n1);
    user_events(&api, n1, &events);
    topology(&api, &cluster, &events);
    raft(&api, &cluster, &events);
    leave_and_join(&api, &cluster, &events);
    unauthorized(&api, n1);
    methods_and_fallback(&api, n1);
    served_paths_are_documented(&api, n1);

    // The stream carried every kind the steps above made.
    let kinds = api.kinds.lock().unwrap().clone();
    for kind in [
        "user",
        "member-status",
        "apply-committed",
        "apply-aborted",
        "master-changed",
        "leader-changed",
    ] {
        assert!(
            kinds.contains(kind),
            "no `{kind}` event was read; read: {kinds:?}"
        );
    }
    every_operation_was_called(&api);
}

/// One agent whose topology cannot commit (two of its three nodes never
/// come): the answers before any commit, then without its data dir.
fn lone_agent(api: &Api) {
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::new(root.path(), "a1");
    agent.write_config(&Config::default());
    let text = format!(
        "cluster: test\nfailover: {{ mode: raft }}\nreplicasets:\n  s1:\n    roles: [storage]\n    nodes:\n      a1: {{ address: {}, election: candidate }}\n      a2: {{ address: {}, election: candidate }}\n      a3: {{ address: {}, election: candidate }}\n",
        addr(agent.port),
        addr(free_port()),
        addr(free_port())
    );
    std::fs::write(&agent.topology, &text).unwrap();
    agent.start(WAIT);
    let node = agent.api();

    let health = api.get(node, "/v1/health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(api.get(node, "/v1/topology")["version"], 0);
    let error = api.expect(node, "GET", "/v1/route?key=k", "", 503);
    assert_eq!(error["code"], "unavailable", "{error}");

    // Before the first commit the whole file is the change.
    let diff = api.get(node, "/v1/topology/diff");
    assert_eq!(diff["committed_version"], 0, "{diff}");
    assert_eq!(diff["unchanged"], false, "{diff}");
    assert_eq!(
        diff["diff"]["nodes_added"].as_array().map(Vec::len),
        Some(3),
        "{diff}"
    );
    assert!(
        diff["changes"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("+ cluster test"))),
        "{diff}"
    );

    // No group, no quorum to read through.
    let reply = api.call(node, "GET", "/v1/leaders?consistent", &[], "");
    assert!(
        matches!(reply.status, 503 | 504),
        "{}: {}",
        reply.status,
        reply.body
    );

    // A data dir removed under the agent: unhealthy, and says why.
    std::fs::remove_dir_all(agent.dir.join("data")).unwrap();
    let health = api.expect(node, "GET", "/v1/health", "", 503);
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["code"], "data_dir_unusable", "{health}");
    assert!(
        health["message"]
            .as_str()
            .is_some_and(|m| m.contains("node-id")),
        "{health}"
    );
    let head = api.call(node, "HEAD", "/v1/health", &[], "");
    assert_eq!((head.status, head.body.as_str()), (503, ""));
    agent.kill(WAIT);
}

fn reads(api: &Api, cluster: &Cluster) {
    for agent in &cluster.nodes {
        let node = agent.api();
        let status = api.get(node, "/v1/status");
        assert_eq!(status["node"], agent.name.as_str());
        let health = api.get(node, "/v1/health");
        assert_eq!(health["status"], "ok", "{health}");
        let checks = health["checks"].as_array().map(Vec::len);
        assert_eq!(checks, Some(6), "every check is listed: {health}");
        let head = api.call(node, "HEAD", "/v1/health", &[], "");
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        api.get(node, "/v1/members");
        api.get(node, "/v1/leaders");
        api.get(node, "/v1/topology");
        api.get(node, "/v1/route?key=user%3A42");
        api.get(node, "/v1/issues");
        api.get(node, "/v1/issues?local");
    }
    let n1 = cluster.nodes[0].api();
    let consistent = api.get(n1, "/v1/leaders?consistent");
    assert_eq!(consistent["consistent"], true, "{consistent}");
    let diff = api.get(n1, "/v1/topology/diff");
    assert_eq!(diff["unchanged"], true, "{diff}");

    for accept in [
        None,
        Some("Accept: application/openmetrics-text;version=1.0.0"),
    ] {
        let headers: Vec<&str> = accept.into_iter().collect();
        let reply = api.call(n1, "GET", "/metrics", &headers, "");
        assert_eq!(reply.status, 200);
        prometheus_lines(&reply.body);
    }

    for path in [
        "/ui",
        "/ui/",
        "/ui/app.js",
        "/ui/style.css",
        "/ui/favicon.svg",
    ] {
        let reply = api.call(n1, "GET", path, &[], "");
        assert_eq!(reply.status, 200, "{path}");
        let etag = reply.header("etag").expect("an ETag").to_string();
        let again = api.call(n1, "GET", path, &[&format!("If-None-Match: {etag}")], "");
        assert_eq!(again.status, 304, "{path} with its ETag");
    }
    let root = api.call(n1, "GET", "/", &[], "");
    assert_eq!((root.status, root.header("location")), (307, Some("/ui")));
}

/// Every line of a Prometheus or OpenMetrics text body is a comment
/// (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a sample `name{labels} value`.
fn prometheus_lines(text: &str) {
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split_whitespace().next().unwrap_or("");
            assert!(
                matches!(word, "HELP" | "TYPE" | "UNIT" | "EOF"),
                "comment line: {line}"
            );
            continue;
        }
        let series_end = match line.find('{') {
            Some(open) => line[open..].find("} ").map(|close| open + close + 1),
            None => line.find(' '),
        };
        let end = series_end.unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = &line[..line.find('{').unwrap_or(end)];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line}"
        );
        let value = line[end..].split_whitespace().next().unwrap_or("");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value in {line}"
        );
        samples += 1;
    }
    assert!(samples > 10, "only {samples} samples:\n{text}");
}

/// What the API refuses before the agent is asked: bad bodies and queries.
fn request_errors(api: &Api, n1: SocketAddr) {
    let route = api.expect(n1, "GET", "/v1/route", "", 400);
    assert_eq!(route["code"], "rejected");
    let both = r#"{"name":"x","payload":"a","payload_base64":"YQ=="}"#;
    assert_eq!(
        api.expect(n1, "POST", "/v1/events", both, 400)["code"],
        "rejected"
    );
    let bad = r#"{"name":"x","payload_base64":"not base64!"}"#;
    assert_eq!(
        api.expect(n1, "POST", "/v1/events", bad, 400)["code"],
        "rejected"
    );
    // axum's own rejections come out as ApiError too.
    assert_eq!(
        api.expect(n1, "POST", "/v1/events", "{", 400)["code"],
        "rejected"
    );
    assert_eq!(
        api.expect(n1, "POST", "/v1/events", "{}", 422)["code"],
        "rejected"
    );
    let plain = api.call(
        n1,
        "POST",
        "/v1/events",
        &["Content-Type: text/plain"],
        r#"{"name":"x"}"#,
    );
    assert_eq!(plain.status, 415, "{}", plain.body);
    assert_eq!(
        api.expect(
            n1,
            "POST",
            "/v1/join",
            r#"{"address":"not an address"}"#,
            400
        )["code"],
        "rejected"
    );
    assert_eq!(
        api.expect(n1, "POST", "/v1/join", r#"{"adress":"x"}"#, 422)["code"],
        "rejected"
    );
    let promote = r#"{"replicaset":"nope","node":"n1"}"#;
    assert_eq!(
        api.expect(n1, "POST", "/v1/failover/promote", promote, 400)["code"],
        "rejected"
    );
    let promote = api.call(n1, "POST", "/v1/failover/promote", &[], "");
    assert_eq!(promote.status, 415);
    let transfer = r#"{"node":"nope"}"#;
    assert_eq!(
        api.expect(n1, "POST", "/v1/raft/transfer-leader", transfer, 400)["code"],
        "rejected"
    );
    assert_eq!(
        api.expect(n1, "POST", "/v1/raft/transfer-leader", "[]", 422)["code"],
        "rejected"
    );
    let (status, body) = api.put_topology(n1, "?wait=maybe", "cluster: test\n");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("rejected")),
        "{body}"
    );
}

fn user_events(api: &Api, n1: SocketAddr, events: &Events) {
    let done = api.expect(
        n1,
        "POST",
        "/v1/events",
        r#"{"name":"deploy","payload":"v42"}"#,
        200,
    );
    assert!(done["message"].is_string(), "{done}");
    let event = events.wait_for(api, "user deploy", |e| {
        e["kind"] == "user" && e["subject"] == "deploy"
    });
    assert_eq!(event["payload"], "v42", "{event}");
    // Bytes that are not UTF-8 come back in base64.
    api.expect(
        n1,
        "POST",
        "/v1/events",
        r#"{"name":"blob","payload_base64":"/wA="}"#,
        200,
    );
    let event = events.wait_for(api, "user blob", |e| {
        e["kind"] == "user" && e["subject"] == "blob"
    });
    assert_eq!(event["payload_base64"], "/wA=", "{event}");
}

/// Applies committed, unchanged, invalid and aborted; the diff of a file
/// that differs, is broken, or is gone.
fn topology(api: &Api, cluster: &Cluster, events: &Events) {
    let n1 = cluster.nodes[0].api();
    let committed = cluster.text.replace("weight: 2", "weight: 3");
    assert_ne!(committed, cluster.text);
    let (status, result) = api.put_topology(n1, "?wait=true&timeout=30s", &committed);
    assert_eq!(
        (status, result["outcome"].as_str()),
        (200, Some("committed")),
        "{result}"
    );
    assert_eq!(result["finished"], true, "{result}");
    let version = result["version"].as_u64().unwrap();
    events.wait_for(api, "apply-committed", |e| e["kind"] == "apply-committed");
    let (status, result) = api.put_topology(n1, "", &committed);
    assert_eq!(
        (status, result["outcome"].as_str()),
        (200, Some("unchanged")),
        "{result}"
    );
    let (status, result) = api.put_topology(n1, "", "cluster: [\n");
    assert_eq!(
        (status, result["outcome"].as_str()),
        (422, Some("invalid")),
        "{result}"
    );

    // n2 cannot bind the port this change gives its http role: it votes no.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let refused = committed.replace(
        "roles: [storage]\n    nodes:\n      n1",
        "roles: [storage, http]\n    nodes:\n      n1",
    ) + &format!("roles:\n  http:\n    listen: {{ n2: {port} }}\n");
    assert!(refused.contains("roles: [storage, http]"), "{refused}");
    let (status, result) = api.put_topology(n1, "", &refused);
    assert_eq!(
        (status, result["outcome"].as_str()),
        (409, Some("aborted")),
        "{result}"
    );
    events.wait_for(api, "apply-aborted", |e| e["kind"] == "apply-aborted");

    // The same change as an edit of n1's file: refused again, so the file
    // stays different from what is committed, and the diff shows it.
    let n1_agent = &cluster.nodes[0];
    wait_file(n1_agent, &committed);
    n1_agent.edit(&refused);
    let diff = wait_diff(api, n1, |d| d["unchanged"] == false);
    assert_eq!(diff["committed_version"], version, "{diff}");
    assert_eq!(
        diff["file"],
        n1_agent.topology.display().to_string(),
        "{diff}"
    );
    let changes = diff["changes"].as_array().unwrap();
    assert!(
        changes.contains(&json!(format!("~ node n2: http port unset -> {port}"))),
        "{diff}"
    );
    assert_eq!(
        diff["diff"]["ports_changed"][0]["to"],
        json!({ "port": port }),
        "{diff}"
    );

    n1_agent.edit("cluster: test\nreplicasets: [\n");
    let error = wait_diff_error(api, n1, "invalid_topology");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("{}:", n1_agent.topology.display()))),
        "FILE:LINE:COLUMN: {error}"
    );
    std::fs::remove_file(&n1_agent.topology).unwrap();
    wait_diff_error(api, n1, "file_missing");
    n1_agent.edit(&committed);
    wait_diff(api, n1, |d| d["unchanged"] == true);
    drop(held);
}

/// Waits until the node's file holds `text` (a commit rewrites it).
fn wait_file(agent: &Agent, text: &str) {
    wait_until_or(WAIT, || {
        (support::read(&agent.topology) == text).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{}'s topology file never became the committed text",
            agent.name
        )
    });
}

fn wait_diff(api: &Api, node: SocketAddr, want: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until_or(WAIT, || {
        let reply = api.call(node, "GET", "/v1/topology/diff", &[], "");
        last = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status == 200 && want(&last)).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("the diff never became what was expected: {last}"))
}

fn wait_diff_error(api: &Api, node: SocketAddr, code: &str) -> Value {
    let mut last = Value::Null;
    wait_until_or(WAIT, || {
        let reply = api.call(node, "GET", "/v1/topology/diff", &[], "");
        last = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status == 422 && last["code"] == code).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("the diff never answered 422 {code}: {last}"))
}

/// Promote the other node of s1, and hand the lead to the other candidate.
fn raft(api: &Api, cluster: &Cluster, events: &Events) {
    let n1 = cluster.nodes[0].api();
    let view = api.get(n1, "/v1/leaders");
    let master = view["masters"]["s1"]["node"].as_str().unwrap().to_string();
    let other = if master == "n1" { "n2" } else { "n1" };
    let request = json!({ "replicaset": "s1", "node": other }).to_string();
    api.expect(n1, "POST", "/v1/failover/promote", &request, 200);
    events.wait_for(api, "master-changed", |e| {
        e["kind"] == "master-changed" && e["subject"] == "s1"
    });

    let leader = view["leader"]["name"].as_str().unwrap().to_string();
    let target = if leader == "n1" { "n2" } else { "n1" };
    let request = json!({ "node": target }).to_string();
    api.expect(n1, "POST", "/v1/raft/transfer-leader", &request, 200);
    events.wait_for(api, "leader-changed", |e| {
        e["kind"] == "leader-changed" && e["subject"] == target
    });
}

/// n3 leaves (unhealthy: it left), n1 sees it `left`; n3 joins again.
fn leave_and_join(api: &Api, cluster: &Cluster, events: &Events) {
    let n3 = cluster.nodes[2].api();
    api.expect(n3, "POST", "/v1/leave", "", 200);
    events.wait_for(api, "n3 left", |e| {
        e["kind"] == "member-status"
            && e["subject"] == "n3"
            && e["detail"].as_str().is_some_and(|d| d.ends_with("left"))
    });
    let health = wait_health(api, n3, 503);
    assert_eq!(health["code"], "left", "{health}");
    let checks = health["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "membership" && c["ok"] == false),
        "{health}"
    );
    let join = json!({ "address": cluster.gossip_addr("n1").to_string() }).to_string();
    api.expect(n3, "POST", "/v1/join", &join, 200);
    wait_health(api, n3, 200);
    events.wait_for(api, "n3 back", |e| {
        e["kind"] == "member-status"
            && e["subject"] == "n3"
            && e["detail"].as_str().is_some_and(|d| d.ends_with("alive"))
    });
}

fn wait_health(api: &Api, node: SocketAddr, status: u16) -> Value {
    let mut last = String::new();
    wait_until_or(WAIT, || {
        let reply = api.call(node, "GET", "/v1/health", &[], "");
        last = reply.body.clone();
        (reply.status == status).then(|| serde_json::from_str(&reply.body).unwrap())
    })
    .unwrap_or_else(|| panic!("/v1/health never answered {status}: {last}"))
}

/// A write without the token is refused over TCP; a read is not.
fn unauthorized(api: &Api, n1: SocketAddr) {
    let reply = api.call_as(n1, "POST", "/v1/events", &[JSON], r#"{"name":"x"}"#, false);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer")));
    let wrong = api.call_as(
        n1,
        "PUT",
        "/v1/topology",
        &["Authorization: Bearer not-the-token-of-this-cluster"],
        "cluster: test\n",
        false,
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let read = api.call_as(n1, "GET", "/v1/status", &[], "", false);
    assert_eq!(read.status, 200);
}

/// A method a documented path does not list answers 405; a path nobody
/// serves answers 404; both as the document's shared responses say.
fn methods_and_fallback(api: &Api, n1: SocketAddr) {
    let documented = api.doc.operations();
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in ["get", "put", "post", "delete", "patch"] {
            if documented.contains(&(path.clone(), method.to_string())) {
                continue;
            }
            let upper = method.to_ascii_uppercase();
            let reply = request(n1, &upper, path, &[JSON], "{}", true, CALL).unwrap();
            assert_eq!(
                reply.status, 405,
                "{upper} {path} is not in the document, yet it answered {}: {}",
                reply.status, reply.body
            );
            api.check_component("MethodNotAllowed", &format!("{upper} {path}"), &reply);
        }
    }
    let reply = request(n1, "GET", "/v1/nothing-here", &[], "", true, CALL).unwrap();
    assert_eq!(reply.status, 404);
    api.check_component("NotFound", "GET /v1/nothing-here", &reply);
}

/// Every path literal in the API's and the CLI's code that the agent
/// serves (anything but the fallback's 404) is in the document: a route
/// added without documentation fails here.
fn served_paths_are_documented(api: &Api, n1: SocketAddr) {
    let documented: BTreeSet<String> = api.doc.operations().into_iter().map(|(p, _)| p).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = BTreeSet::new();
    for dir in ["src/api", "src/cli"] {
        path_literals(&root.join(dir), &mut candidates);
    }
    let mut served = BTreeSet::new();
    for path in &candidates {
        if documented.contains(path) {
            served.insert(path.clone());
            continue;
        }
        let reply = request(n1, "GET", path, &[], "", true, Duration::from_secs(5));
        let fallback = reply.as_ref().is_some_and(|r| {
            r.status == 404
                && r.body.contains("\"not_found\"")
                && r.body.contains("no such endpoint")
        });
        assert!(
            fallback,
            "{path} is served (GET answered {:?}) but is not in docs/api.yaml",
            reply.map(|r| (r.status, r.body.chars().take(200).collect::<String>()))
        );
    }
    for known in ["/v1/status", "/v1/events", "/metrics", "/ui"] {
        assert!(
            served.contains(known),
            "the scan of the sources missed {known}: {served:?}"
        );
    }
}

/// String literals of the `.rs` files under `dir` that look like URL paths
/// (the query cut off).
fn path_literals(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            path_literals(&path, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for literal in text.split('"').skip(1).step_by(2) {
            let literal = literal.split('?').next().unwrap_or("");
            let path_like = literal.starts_with('/')
                && literal.len() < 80
                && literal
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c));
            if path_like {
                found.insert(literal.to_string());
            }
        }
    }
}

/// Every operation of the document was called and answered as documented.
fn every_operation_was_called(api: &Api) {
    let seen = api.seen.lock().unwrap();
    let called: BTreeSet<(String, String)> = seen
        .iter()
        .map(|(p, m, _)| (p.clone(), m.clone()))
        .collect();
    let missing: Vec<_> = api.doc.operations().difference(&called).cloned().collect();
    assert!(missing.is_empty(), "never called: {missing:?}");
    let mut by_operation: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (path, method, status) in seen.iter() {
        by_operation
            .entry(format!("{} {path}", method.to_uppercase()))
            .or_default()
            .push(*status);
    }
    eprintln!("checked against docs/api.yaml: {by_operation:#?}");
}

/// The validator refuses what the document forbids (so the checks above
/// can fail): a field the document does not list, a missing required
/// one, a null where none is allowed, a value outside its enum, a wrong
/// format, an error code outside the list.
#[test]
fn the_validator_refuses_what_the_document_forbids() {
    let api = Api::load();
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let valid = |name: &str, value: Value| {
        let problems = api.doc.validate(&schema(name), &value);
        assert!(problems.is_empty(), "{name} {value}: {problems:?}");
    };
    let invalid = |name: &str, value: Value, needle: &str| {
        let problems = api.doc.validate(&schema(name), &value);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{name} {value} should fail with `{needle}`: {problems:?}"
        );
    };
    valid(
        "ApiError",
        json!({ "code": "not_found", "message": "no such endpoint: /x" }),
    );
    invalid(
        "ApiError",
        json!({ "code": "not_found", "message": "m", "extra": 1 }),
        "$.extra: not in the document",
    );
    invalid(
        "ApiError",
        json!({ "code": "no_such_code", "message": "m" }),
        "is not one of",
    );
    invalid(
        "ApiError",
        json!({ "code": "not_found" }),
        "the required `message` is missing",
    );
    invalid(
        "ApiError",
        json!({ "code": 404, "message": "m" }),
        "is not of type string",
    );
    let event = json!({
        "at_ms": 1, "kind": "user", "subject": "deploy", "uuid": null, "detail": "",
        "id": "x/1/1", "payload": "v42"
    });
    valid("ApiEvent", event.clone());
    let mut bad = event.clone();
    bad["uuid"] = json!("not-a-uuid");
    invalid("ApiEvent", bad, "is not a valid uuid");
    let mut bad = event.clone();
    bad["at_ms"] = json!(-1);
    invalid("ApiEvent", bad, "below the minimum");
    let mut bad = event;
    bad["subject"] = Value::Null;
    invalid("ApiEvent", bad, "not nullable");
    invalid(
        "Health",
        json!({ "status": "fine", "node": "n1", "checks": [] }),
        "is not one of",
    );
    invalid(
        "Done",
        json!({ "message": ["not", "a", "string"] }),
        "$.message",
    );
}
