//! Who may use the API, against real agents: over TCP a write needs the
//! token (401 and no effect without it or with a wrong one), over the unix
//! socket it does not; an agent listening beyond loopback wants the token
//! for reads too, except `GET /v1/health`, and does not start without a
//! token file; the CLI sends its `--token-file` and turns a 401 into one
//! line of advice; the socket file is 0660, replaced when stale, refused
//! when live, removed at stop; SIGHUP reads the token file again.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::agents::{quoted, Agent, Config, KEY};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(10);

/// One answer, with its head (status line and headers) and body.
struct Answer {
    code: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.head, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

/// An HTTP/1.0 request on TCP with `authorization` as the header's value
/// (none when None).
fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(api).expect("connect to the API");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let content_type = if body.starts_with('{') {
        "application/json"
    } else {
        "application/yaml"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {api}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    Answer {
        code: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn right() -> String {
    format!("Bearer {TOKEN}")
}

const WRONG: &str = "Bearer cohort-tests-api-token-6d1f0c2c";

/// A refusal is 401 with the JSON error alone and a Bearer challenge.
fn assert_refused(answer: &Answer, what: &str) -> String {
    assert_eq!(answer.code, 401, "{what}: {} {}", answer.head, answer.body);
    let error = answer.json();
    let fields: Vec<&String> = error.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["code", "message"], "{what}: nothing else: {error}");
    assert_eq!(error["code"], "unauthorized", "{what}");
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"cohort\""),
        "{what}: {}",
        answer.head
    );
    assert!(!answer.body.contains(TOKEN), "{what}: the token in {error}");
    assert_eq!(
        answer.header("allow"),
        None,
        "{what}: nothing of the route: {}",
        answer.head
    );
    error["message"].as_str().unwrap().to_string()
}

/// A one-node cluster `name` of its own topology, on loopback, with the
/// harness' token and socket, started and committed at version 1.
fn lone_agent(root: &Path, name: &str) -> Agent {
    let mut agent = Agent::new(root, name);
    agent.write_config(&Config::default());
    fs::write(&agent.topology, topology(&agent, "")).unwrap();
    agent.start(WAIT);
    wait_until(WAIT, "version 1 committed", || {
        (agent.status()?["config_version"] == 1).then_some(())
    });
    agent
}

fn topology(agent: &Agent, roles: &str) -> String {
    format!(
        "cluster: test\nreplicasets:\n  s1:\n{roles}    nodes:\n      {}: {{ address: {} }}\n",
        agent.name,
        addr(agent.port)
    )
}

/// Writes a node config with `api` as its `api:` value.
fn write_config(agent: &Agent, api: &str) {
    let key = agent.dir.join("gossip.key");
    fs::write(&key, format!("{KEY}\n")).unwrap();
    fs::write(
        agent.dir.join("cohort.yaml"),
        format!(
            "node: {}\ncluster: test\nbind: {}\ndata_dir: {}\ntopology: {}\n\
             gossip: {{ key_file: {}, protocol_period: 300ms, ack_timeout: 150ms }}\n\
             api: {api}\nlog: {{ level: info, format: text }}\n",
            agent.name,
            addr(agent.port),
            quoted(&agent.dir.join("data")),
            quoted(&agent.topology),
            quoted(&key),
        ),
    )
    .unwrap();
}

/// The cohort CLI without the tests' token.
fn cli_without_token(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .env_remove("COHORT_TOKEN_FILE")
        .env_remove("COHORT_API")
        .env_remove("COHORT_SOCKET")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `GET /v1/events` with the token: the first `user` event's subject.
fn first_user_event(api: SocketAddr, sent: impl FnOnce()) -> String {
    let mut stream = TcpStream::connect(api).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.0\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        right()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    // The headers come once the handler has subscribed to the feed.
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "headers end");
    }
    sent();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let Some(data) = line.trim_end().strip_prefix("data:") else {
            continue;
        };
        let event: Value = serde_json::from_str(data.trim()).unwrap();
        if event["kind"] == "user" {
            return event["subject"].as_str().unwrap().to_string();
        }
    }
}

#[test]
fn a_tcp_write_needs_the_token_and_a_refused_one_does_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = lone_agent(root.path(), "solo");
    let api = agent.api();

    // Reads on loopback are open.
    assert_eq!(request(api, "GET", "/v1/status", None, "").code, 200);

    // PUT /v1/topology: refused without a token and with a wrong one.
    let first = topology(&agent, "    roles: [storage]\n");
    let message = assert_refused(
        &request(api, "PUT", "/v1/topology?wait=true", None, &first),
        "PUT without a token",
    );
    assert!(
        message.contains("this request needs the API token")
            && message.contains("--token-file")
            && message.contains(&agent.socket().display().to_string()),
        "{message}"
    );
    let wrong = request(api, "PUT", "/v1/topology?wait=true", Some(WRONG), &first);
    assert_refused(&wrong, "PUT with a wrong token");
    assert!(
        wrong
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""),
        "{}",
        wrong.head
    );
    assert_eq!(agent.status().unwrap()["config_version"], 1);
    // With the token it is applied, as version 2: neither refusal made one.
    let second = topology(&agent, "    roles: [storage, router]\n");
    let applied = request(
        api,
        "PUT",
        "/v1/topology?wait=true",
        Some(&right()),
        &second,
    );
    assert_eq!(applied.code, 200, "{}", applied.body);
    assert_eq!(applied.json()["version"], 2, "{}", applied.body);
    let committed = request(api, "GET", "/v1/topology", None, "").json();
    assert_eq!(committed["version"], 2);
    assert_eq!(committed["text"], second.as_str(), "{committed}");

    // POST /v1/events: the refused event is never delivered; the one sent
    // after it with the token is the first the node delivers.
    let first_seen = first_user_event(api, || {
        let body = r#"{"name":"refused"}"#;
        assert_refused(
            &request(api, "POST", "/v1/events", None, body),
            "an event without a token",
        );
        assert_refused(
            &request(api, "POST", "/v1/events", Some(WRONG), body),
            "an event with a wrong token",
        );
        let sent = request(
            api,
            "POST",
            "/v1/events",
            Some(&right()),
            r#"{"name":"allowed"}"#,
        );
        assert_eq!(sent.code, 200, "{}", sent.body);
    });
    assert_eq!(first_seen, "allowed");

    // POST /v1/leave refused: a members view made after it (it counts an
    // event sent later) still has the node alive, as it would not had the
    // leave run: a leave is done before its answer.
    let delivered = |agent: &Agent| agent.members()?["gossip"]["user_events_delivered"].as_u64();
    let before = delivered(&agent).unwrap();
    assert_refused(
        &request(api, "POST", "/v1/leave", None, "{}"),
        "a leave without a token",
    );
    assert_refused(
        &request(api, "POST", "/v1/leave", Some(WRONG), "{}"),
        "a leave with a wrong token",
    );
    assert_refused(
        &request(api, "DELETE", "/v1/nothing-here", None, ""),
        "any method but GET and HEAD, routed or not",
    );
    let marker = request(
        api,
        "POST",
        "/v1/events",
        Some(&right()),
        r#"{"name":"marker"}"#,
    );
    assert_eq!(marker.code, 200, "{}", marker.body);
    let members = wait_until(WAIT, "a members view with the marker event", || {
        agent
            .members()
            .filter(|m| m["gossip"]["user_events_delivered"].as_u64() > Some(before))
    });
    let me = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "solo")
        .cloned();
    assert_eq!(me.unwrap()["status"], "alive", "{members}");

    // The unix socket needs no token: 0660, and a leave there works.
    let socket = agent.socket();
    let meta = fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (code, body) = unix_http(&socket, "POST", "/v1/leave", "{}").expect("an answer");
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "the node to have left", || {
        (agent.sees("solo")? == "left").then_some(())
    });

    agent.stop(STOP);
    assert!(!socket.exists(), "the socket file goes with the agent");
}

#[test]
fn beyond_loopback_reads_need_the_token_too_but_health() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::new(root.path(), "open");
    write_config(
        &agent,
        &format!(
            "{{ http: \"0.0.0.0:{}\", socket: {}, token_file: {} }}",
            agent.api,
            quoted(&agent.socket()),
            quoted(token_file())
        ),
    );
    agent.start(WAIT);
    let api = agent.api();
    for path in ["/v1/status", "/v1/members", "/v1/topology", "/metrics"] {
        assert_refused(&request(api, "GET", path, None, ""), path);
        assert_refused(&request(api, "GET", path, Some(WRONG), ""), path);
        let answer = request(api, "GET", path, Some(&right()), "");
        assert_eq!(answer.code, 200, "{path}: {}", answer.body);
    }
    // Load balancers probe health without credentials.
    let health = request(api, "GET", "/v1/health", None, "");
    assert_eq!(health.code, 200, "{}", health.body);
    assert_eq!(request(api, "HEAD", "/v1/health", None, "").code, 200);
    assert_refused(
        &request(api, "POST", "/v1/health", None, ""),
        "only reading health is open",
    );
    // So are the web page's files: a browser loads them without a token.
    let page = request(api, "GET", "/ui/app.js", None, "");
    assert_eq!(page.code, 200, "{}", page.head);

    // The CLI: one line of advice without the token, the answer with it.
    let target = api.to_string();
    let out = cli_without_token(&["--api", &target, "status"]);
    assert_eq!(out.status.code(), Some(4), "refused access: {out:?}");
    let line = stderr(&out);
    assert!(
        line.starts_with(&format!(
            "cohort: unauthorized by the agent at {target}: this request needs the API token"
        )) && line.ends_with("\n")
            && line.lines().count() == 1,
        "{line}"
    );
    let token_arg = token_file().display().to_string();
    let out = cli_without_token(&[
        "--api",
        &target,
        "--token-file",
        &token_arg,
        "--format",
        "json",
        "status",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["node"], "open");
    // The socket is as open as its file.
    let socket = agent.socket().display().to_string();
    let out = cli_without_token(&["--socket", &socket, "--format", "json", "members"]);
    assert!(out.status.success(), "{}", stderr(&out));
    agent.stop(STOP);
}

#[test]
fn an_agent_beyond_loopback_without_a_token_file_does_not_start() {
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::new(root.path(), "bare");
    let config = agent.dir.join("cohort.yaml");
    write_config(
        &agent,
        &format!(
            "{{ http: \"0.0.0.0:{}\", socket: {} }}",
            agent.api,
            quoted(&agent.socket())
        ),
    );
    let expected = format!(
        "{}:7:14: api.http: 0.0.0.0:{} is reachable from other hosts, so the API needs a token: set api.token_file (a file holding one line, e.g. made with `openssl rand -hex 32`), or listen on 127.0.0.1\n",
        config.display(),
        agent.api
    );
    let config_arg = config.display().to_string();
    let out = cli_without_token(&["agent", "--config", &config_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), expected);
    let out = cli_without_token(&["validate", "node", &config_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), expected, "validate says it too");

    // The same from the command line.
    write_config(
        &agent,
        &format!(
            "{{ http: {}, socket: {} }}",
            agent.api(),
            quoted(&agent.socket())
        ),
    );
    let open = format!("0.0.0.0:{}", agent.api);
    let out = cli_without_token(&["agent", "--config", &config_arg, "--api-http", &open]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("cohort: the HTTP API on {open} is reachable from other hosts, so it needs a token: set api.token_file in the node config, or listen on 127.0.0.1\n")
    );
    assert!(!agent.socket().exists(), "nothing was bound");
}

#[test]
fn the_cli_sends_its_token_file_and_explains_a_401_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = lone_agent(root.path(), "cli");
    let target = agent.api().to_string();

    let out = cli_without_token(&["--api", &target, "event", "no-token"]);
    assert_eq!(out.status.code(), Some(4), "refused access: {out:?}");
    assert_eq!(
        stderr(&out),
        format!(
            "cohort: unauthorized by the agent at {target}: this request needs the API token (Authorization: Bearer TOKEN, the token of the agent's api.token_file): give cohort --token-file FILE or set COHORT_TOKEN_FILE, or use its unix socket (cohort --socket {})\n",
            agent.socket().display()
        )
    );

    let wrong = root.path().join("wrong.token");
    fs::write(&wrong, "not-the-token-of-this-agent\n").unwrap();
    let wrong_arg = wrong.display().to_string();
    let out = cli_without_token(&["--api", &target, "--token-file", &wrong_arg, "leave"]);
    assert_eq!(out.status.code(), Some(4), "refused access: {out:?}");
    assert_eq!(
        stderr(&out),
        format!(
            "cohort: unauthorized by the agent at {target} (token from {wrong_arg}): the API token sent is not this agent's (api.token_file): give cohort --token-file a copy of that file\n"
        )
    );
    assert_eq!(agent.sees("cli").as_deref(), Some("alive"));

    let token_arg = token_file().display().to_string();
    let out = cli_without_token(&["--api", &target, "--token-file", &token_arg, "event", "ok"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // COHORT_TOKEN_FILE does the same (the harness' `cohort()` sets it).
    let out = cohort()
        .args(["--api", &target, "event", "ok-again"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The socket needs none, by flag or by COHORT_SOCKET.
    let socket = agent.socket().display().to_string();
    let out = cli_without_token(&["--socket", &socket, "event", "by-socket"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .env_remove("COHORT_TOKEN_FILE")
        .env_remove("COHORT_API")
        .env("COHORT_SOCKET", &socket)
        .args(["event", "by-env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_without_token(&["--api", &target, "--socket", &socket, "status"]);
    assert_eq!(out.status.code(), Some(2), "--api and --socket conflict");
    agent.stop(STOP);
}

#[test]
fn the_socket_file_is_taken_over_when_stale_and_refused_when_live() {
    let root = tempfile::tempdir().unwrap();
    let socket = root.path().join("run/api.sock");
    let api = |agent: &Agent| {
        format!(
            "{{ http: {}, socket: {}, token_file: {} }}",
            agent.api(),
            quoted(&socket),
            quoted(token_file())
        )
    };
    let mut first = Agent::new(root.path(), "first");
    write_config(&first, &api(&first));
    first.start(WAIT);
    let dir_mode = fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o750, "the socket's dir is made 0750");

    // A second agent asked for the same socket: a live one is not touched.
    let second = Agent::new(root.path(), "second");
    write_config(&second, &api(&second));
    let config = second.dir.join("cohort.yaml").display().to_string();
    let out = cli_without_token(&["agent", "--config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "cohort: API socket: {} is served by a running agent\n",
            socket.display()
        )
    );
    let (code, body) = unix_http(&socket, "GET", "/v1/status", "").expect("first answers");
    assert_eq!(code, 200);
    assert!(body.contains("\"node\":\"first\""), "{body}");

    // SIGKILL leaves the file; the next start replaces it.
    first.kill(STOP);
    assert!(socket.exists(), "a killed agent leaves its socket");
    first.start(WAIT);
    let (code, _) = unix_http(&socket, "GET", "/v1/status", "").expect("an answer again");
    assert_eq!(code, 200);
    assert!(
        read(&first.log()).contains("removed the stale API socket"),
        "{}",
        first.log_tail(20)
    );
    first.stop(STOP);
    assert!(!socket.exists());

    // A socket asked for that cannot be made stops the start.
    let blocker = root.path().join("file");
    fs::write(&blocker, "").unwrap();
    let third = Agent::new(root.path(), "third");
    write_config(
        &third,
        &format!(
            "{{ http: {}, socket: {} }}",
            third.api(),
            quoted(&blocker.join("api.sock"))
        ),
    );
    let config = third.dir.join("cohort.yaml").display().to_string();
    let out = cli_without_token(&["agent", "--config", &config]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "cohort: API socket: cannot create the directory {}: Not a directory\n",
            blocker.display()
        )
    );
}

#[test]
fn a_default_socket_that_cannot_be_made_leaves_tcp_alone() {
    // A dev node's default socket is in its data dir: one too deep for a
    // socket path is skipped with a warning, and the agent serves TCP.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("d".repeat(110));
    let (port, api_port) = (free_port(), free_port());
    let log = root.path().join("agent.log");
    let mut agent = Proc::spawn(
        cohort()
            .args(["agent", "--dev", "--log-format", "text", "--data-dir"])
            .arg(&data)
            .args(["--bind", &addr(port).to_string()])
            .args(["--api-http", &addr(api_port).to_string()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap()),
    );
    wait_until(WAIT, "the API on TCP", || status(addr(api_port)));
    let text = read(&log);
    assert!(
        text.contains("WARN the API's default unix socket is not served: cannot bind"),
        "{text}"
    );
    assert!(text.contains("api_socket=off"), "{text}");
    agent.signal(SIGTERM);
    assert_eq!(agent.wait_exit(STOP).code(), Some(0));
}

#[test]
fn sighup_reads_the_token_file_again() {
    let root = tempfile::tempdir().unwrap();
    let token = root.path().join("api.token");
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    fs::write(&token, format!("{old}\n")).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let mut agent = Agent::new(root.path(), "rotate");
    write_config(
        &agent,
        &format!(
            "{{ http: {}, socket: {}, token_file: {} }}",
            agent.api(),
            quoted(&agent.socket()),
            quoted(&token)
        ),
    );
    agent.start(WAIT);
    let api = agent.api();
    let event = |token: &str| {
        request(
            api,
            "POST",
            "/v1/events",
            Some(&format!("Bearer {token}")),
            r#"{"name":"rotation"}"#,
        )
        .code
    };
    assert_eq!(event(old), 200);
    assert_eq!(event(new), 401);

    fs::write(&token, format!("{new}\n")).unwrap();
    agent.proc.as_ref().unwrap().signal(SIGHUP);
    wait_until(WAIT, "the new token to be taken", || {
        (event(new) == 200).then_some(())
    });
    assert_eq!(event(old), 401, "the old token is gone");
    let text = read(&agent.log());
    assert!(text.contains("API token reloaded"), "{text}");
    assert!(
        !text.contains(old) && !text.contains(new),
        "a token in the log"
    );

    // A broken file keeps the running token.
    fs::write(&token, "short\n").unwrap();
    agent.proc.as_ref().unwrap().signal(SIGHUP);
    wait_until(WAIT, "the reload to refuse the file", || {
        read(&agent.log())
            .contains("reload: the running API token stays")
            .then_some(())
    });
    assert_eq!(event(new), 200);
    agent.stop(STOP);
}

#[test]
fn validate_names_every_api_problem_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cohort.yaml");
    let long = format!("/{}/api.sock", "x".repeat(110));
    fs::write(
        &file,
        "node: a\napi:\n  http: \"[::]:8300\"\n  socket: run/api.sock\n  token_file: keys/api.token\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let out = cli_without_token(&["validate", "node", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{f}:4:11: api.socket: `run/api.sock` must be an absolute path\n\
             {f}:5:15: api.token_file: `keys/api.token` must be an absolute path\n"
        ),
        "a token file, even a relative one, answers the exposure"
    );
    fs::write(
        &file,
        format!("node: a\napi: {{ http: \"[::]:8300\", socket: \"{long}\" }}\n"),
    )
    .unwrap();
    let out = cli_without_token(&["validate", "node", &f]);
    assert_eq!(
        stderr(&out),
        format!(
            "{f}:2:14: api.http: [::]:8300 is reachable from other hosts, so the API needs a token: set api.token_file (a file holding one line, e.g. made with `openssl rand -hex 32`), or listen on 127.0.0.1\n\
             {f}:2:35: api.socket: `{long}` is 120 bytes long; a unix socket path holds at most 107\n"
        )
    );
    fs::write(
        &file,
        "node: a\napi: { http: \"127.0.0.2:8300\", socket: null }\n",
    )
    .unwrap();
    let out = cli_without_token(&["validate", "node", &f]);
    assert!(
        out.status.success(),
        "127.0.0.0/8 is loopback: {}",
        stderr(&out)
    );
}
