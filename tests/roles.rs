//! Roles against real processes and sockets: dependency order, external
//! roles (veto, stdin, environment, deadline), and the `http` role with
//! several nodes of one host in one process, each its own `RoleSet`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cohort::config::Topology;
use cohort::roles::{
    BoxFuture, ClusterState, HttpRole, NodeIdentity, Registry, Role, RoleAction, RoleContext,
    RoleResult, RoleSet, DEFAULT_TIMEOUT,
};
use cohort::twophase::Version;
use uuid::Uuid;

fn topology(text: &str) -> Arc<Topology> {
    Arc::new(Topology::parse(text, Path::new("topology.yaml")).expect("a valid topology"))
}

fn identity(name: &str) -> NodeIdentity {
    NodeIdentity {
        name: name.to_string(),
        uuid: Uuid::new_v4(),
    }
}

// ---------------------------------------------------------------- logs

/// Everything the library logged in this test binary (tests filter by the
/// ports they own, so sharing is fine).
fn logs() -> String {
    let buffer = capture();
    let bytes = buffer.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&bytes).into_owned()
}

fn capture() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(buffer))
            .try_init();
        buffer
    })
}

struct Sink(&'static Mutex<Vec<u8>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged_line(level: &str, message: &str) -> bool {
    logs()
        .lines()
        .any(|line| line.contains(level) && line.ends_with(message))
}

// ---------------------------------------------------------- dependency order

type Calls = Arc<Mutex<Vec<String>>>;

/// Records every call it gets, by role name.
struct Recorder {
    calls: Calls,
    needs: Vec<String>,
    fail_init: bool,
}

impl Recorder {
    fn note(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

impl Role for Recorder {
    fn dependencies(&self) -> Vec<String> {
        self.needs.clone()
    }

    fn init<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        self.note(format!("init {}", ctx.role));
        let result = match self.fail_init {
            true => Err(format!("{} cannot start", ctx.role)),
            false => Ok(()),
        };
        Box::pin(async move { result })
    }

    fn validate_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        _new: &'a Topology,
        _old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        self.note(format!("validate {}", ctx.role));
        Box::pin(async { Ok(()) })
    }

    fn apply_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        _new: &'a Topology,
        _old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        self.note(format!("apply {} in {}", ctx.role, ctx.replicaset));
        Box::pin(async { Ok(()) })
    }

    fn master_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        self.note(format!("master {} {}", ctx.role, ctx.is_master()));
        Box::pin(async { Ok(()) })
    }

    fn cluster_state_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        self.note(format!("cluster {} {}", ctx.role, ctx.cluster_state()));
        Box::pin(async { Ok(()) })
    }

    fn stop<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        self.note(format!("stop {}", ctx.role));
        Box::pin(async { Ok(()) })
    }
}

fn recording(calls: &Calls, fail: &[&str]) -> Registry {
    let mut registry = Registry::empty();
    for name in ["storage", "router", "http"] {
        let calls = calls.clone();
        let fail_init = fail.contains(&name);
        registry = registry.with(name, move || {
            Arc::new(Recorder {
                calls: calls.clone(),
                needs: Vec::new(),
                fail_init,
            })
        });
    }
    registry
}

fn take(calls: &Calls) -> Vec<String> {
    std::mem::take(&mut *calls.lock().unwrap())
}

const ORDERED: &str = "
cluster: c
replicasets:
  s1:
    roles: [http]
    nodes: { a: { address: 127.0.0.1:3301 } }
  r1:
    roles: [router]
    nodes: { b: { address: 127.0.0.1:3302 } }
roles:
  http: { depends: [router] }
  router: { depends: [storage] }
";

#[tokio::test]
async fn roles_start_in_dependency_order_and_stop_in_reverse() {
    let calls = Calls::default();
    let a = RoleSet::new(identity("a"), recording(&calls, &[]), false);
    let t1 = topology(ORDERED);

    assert_eq!(a.plan(&t1).await.unwrap(), ["storage", "router", "http"]);
    a.validate_all(&t1, None, Some(Version(1))).await.unwrap();
    let mut validated = take(&calls);
    validated.sort();
    assert_eq!(
        validated,
        ["validate http", "validate router", "validate storage"]
    );
    assert_eq!(
        a.running().await,
        Vec::<String>::new(),
        "validation starts nothing"
    );

    let report = a.apply(t1.clone(), Some(Version(1))).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(
        take(&calls),
        [
            "init storage",
            "apply storage in s1",
            "init router",
            "apply router in s1",
            "init http",
            "apply http in s1",
        ]
    );
    assert_eq!(a.running().await, ["storage", "router", "http"]);

    // Every running role hears a master change, in start order, once.
    let mut watch = a.watch_master();
    a.set_master(true).await;
    a.set_master(true).await;
    assert!(*watch.borrow_and_update());
    assert_eq!(
        take(&calls),
        [
            "master storage true",
            "master router true",
            "master http true"
        ]
    );

    // The replica set drops http and router's dependency: both stop,
    // dependents first; storage, still named, stays.
    let t2 = topology(
        "
cluster: c
replicasets:
  s1:
    roles: [storage]
    nodes: { a: { address: 127.0.0.1:3301 } }
",
    );
    let report = a.apply(t2, Some(Version(2))).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(
        take(&calls),
        ["stop http", "stop router", "apply storage in s1"]
    );

    // Back again: added roles start after what they need.
    a.apply(t1, Some(Version(3))).await;
    assert_eq!(
        take(&calls),
        [
            "apply storage in s1",
            "init router",
            "apply router in s1",
            "init http",
            "apply http in s1",
        ]
    );

    let report = a.stop_all().await;
    assert!(report.steps.iter().all(|s| s.action == RoleAction::Stop));
    assert_eq!(take(&calls), ["stop http", "stop router", "stop storage"]);
    assert!(a.running().await.is_empty());
}

#[tokio::test]
async fn a_node_runs_exactly_its_replica_sets_roles() {
    let calls = Calls::default();
    let t = topology(ORDERED);
    let b = RoleSet::new(identity("b"), recording(&calls, &[]), false);
    b.apply(t.clone(), None).await;
    assert_eq!(b.running().await, ["storage", "router"]);
    assert_eq!(
        take(&calls),
        [
            "init storage",
            "apply storage in r1",
            "init router",
            "apply router in r1"
        ]
    );

    // A node the topology does not name runs nothing (and one that leaves
    // it stops everything).
    let stranger = RoleSet::new(identity("z"), recording(&calls, &[]), false);
    assert!(stranger.apply(t.clone(), None).await.steps.is_empty());
    assert!(stranger.running().await.is_empty());
    let gone = topology(
        "cluster: c\nreplicasets:\n  s1:\n    nodes: { a: { address: 127.0.0.1:3301 } }\n",
    );
    b.apply(gone, None).await;
    assert!(b.running().await.is_empty());
    assert_eq!(take(&calls), ["stop router", "stop storage"]);
}

#[tokio::test]
async fn a_role_whose_dependency_fails_to_start_is_not_started() {
    let calls = Calls::default();
    let a = RoleSet::new(identity("a"), recording(&calls, &["router"]), false);
    let report = a.apply(topology(ORDERED), None).await;
    let failure = report.result().unwrap_err();
    assert_eq!(
        failure,
        "role `router` start: router cannot start; role `http` start: not started: it needs `router`, which did not start"
    );
    assert_eq!(
        take(&calls),
        ["init storage", "apply storage in s1", "init router"]
    );
    assert_eq!(a.running().await, ["storage"]);
}

#[tokio::test]
async fn dependencies_a_role_declares_in_code_count_too() {
    let calls = Calls::default();
    let needs_storage = {
        let calls = calls.clone();
        move || {
            Arc::new(Recorder {
                calls: calls.clone(),
                needs: vec!["storage".to_string()],
                fail_init: false,
            }) as Arc<dyn Role>
        }
    };
    let registry = recording(&calls, &[]).with("http", needs_storage);
    let a = RoleSet::new(identity("a"), registry, false);
    let t = topology(
        "
cluster: c
replicasets:
  s1:
    roles: [http]
    nodes: { a: { address: 127.0.0.1:3301 } }
",
    );
    assert_eq!(a.plan(&t).await.unwrap(), ["storage", "http"]);
}

// ---------------------------------------------------------- external roles

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Records its stdin, arguments and COHORT_* environment per action;
/// refuses in `validate` when the config says so.
const RECORDING_ROLE: &str = r#"dir=$(dirname "$0")
cat > "$dir/$1.stdin"
env | grep '^COHORT_' | sort > "$dir/$1.env"
echo "$1" >> "$dir/calls"
if [ "$1" = validate ]; then
  if grep -q 'veto: loud' "$dir/validate.stdin"; then
    echo "  billing refuses: currency XYZ is unknown  " >&2
    exit 3
  fi
  if grep -q 'veto: silent' "$dir/validate.stdin"; then exit 4; fi
fi
echo "done $1"
"#;

fn billing_topology(exec: &Path, veto: &str) -> Arc<Topology> {
    topology(&format!(
        "
cluster: c
replicasets:
  s1:
    roles: [billing]
    nodes: {{ a: {{ address: 127.0.0.1:3301 }} }}
roles:
  billing:
    exec: {}
    depends: [storage]
    timeout: 5s
    config: {{ currency: EUR, veto: {veto} }}
",
        exec.display()
    ))
}

/// One node running the external role `slow`, with `timeout` per action.
fn slow_topology(exec: &Path, timeout: &str) -> Arc<Topology> {
    topology(&format!(
        "
cluster: c
replicasets:
  s1:
    roles: [slow]
    nodes: {{ a: {{ address: 127.0.0.1:3301 }} }}
roles:
  slow: {{ exec: {}, timeout: {timeout} }}
",
        exec.display()
    ))
}

fn env_of(dir: &Path, action: &str) -> Vec<String> {
    support::read(&dir.join(format!("{action}.env")))
        .lines()
        .map(str::to_string)
        .collect()
}

fn calls_of(dir: &Path) -> Vec<String> {
    support::read(&dir.join("calls"))
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn an_external_role_vetoes_with_its_stderr_and_gets_yaml_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let exec = script(dir.path(), "billing", RECORDING_ROLE);
    let me = identity("a");
    let a = RoleSet::new(me.clone(), Registry::builtin(), true);

    let refused = a
        .validate_all(&billing_topology(&exec, "loud"), None, None)
        .await
        .unwrap_err();
    assert_eq!(refused.failures.len(), 1);
    assert_eq!(refused.failures[0].role, "billing");
    assert_eq!(
        refused.failures[0].reason,
        "billing refuses: currency XYZ is unknown"
    );
    assert_eq!(
        refused.to_string(),
        "role `billing`: billing refuses: currency XYZ is unknown"
    );
    let silent = a
        .validate_all(&billing_topology(&exec, "silent"), None, None)
        .await
        .unwrap_err();
    assert_eq!(silent.failures[0].reason, "exit status 4");
    assert!(a.running().await.is_empty());

    // Accepted, then applied: the section as YAML on stdin, the node's
    // context in the environment.
    let good = billing_topology(&exec, "none");
    a.validate_all(&good, None, Some(Version(7))).await.unwrap();
    let report = a.apply(good.clone(), Some(Version(7))).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(a.running().await, ["storage", "billing"]);

    let stdin: serde_json::Value =
        serde_saphyr::from_str(&support::read(&dir.path().join("apply.stdin"))).unwrap();
    assert_eq!(
        stdin,
        serde_json::json!({
            "exec": exec.display().to_string(),
            "depends": ["storage"],
            "timeout": "5s",
            "config": { "currency": "EUR", "veto": "none" },
        })
    );
    let expected_env = |action: &str, master: &str| {
        vec![
            format!("COHORT_ACTION={action}"),
            "COHORT_CLUSTER_STATE=assembling".to_string(),
            "COHORT_CONFIG_VERSION=7".to_string(),
            format!("COHORT_IS_MASTER={master}"),
            "COHORT_NODE=a".to_string(),
            "COHORT_REPLICASET=s1".to_string(),
            "COHORT_ROLE=billing".to_string(),
            format!("COHORT_UUID={}", me.uuid),
        ]
    };
    assert_eq!(
        env_of(dir.path(), "validate"),
        expected_env("validate", "true")
    );
    assert_eq!(env_of(dir.path(), "apply"), expected_env("apply", "true"));

    // The same section again: nothing to do. A master change: apply again.
    a.apply(good.clone(), Some(Version(7))).await;
    assert_eq!(
        calls_of(dir.path()),
        ["validate", "validate", "validate", "apply"]
    );
    let report = a.set_master(false).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(calls_of(dir.path()).last().unwrap(), "apply");
    assert_eq!(env_of(dir.path(), "apply"), expected_env("apply", "false"));

    // Stopping calls `stop` with the section it last applied.
    let report = a.stop_all().await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(calls_of(dir.path()).last().unwrap(), "stop");
    assert_eq!(
        support::read(&dir.path().join("stop.stdin")),
        support::read(&dir.path().join("apply.stdin"))
    );
    assert_eq!(env_of(dir.path(), "stop"), expected_env("stop", "false"));
}

/// Records each call's arguments and the cluster state in its
/// environment, one line a call.
const HEARING_ROLE: &str = r#"cat > /dev/null
echo "$* (COHORT_CLUSTER_STATE=$COHORT_CLUSTER_STATE)" >> "$(dirname "$0")/heard"
"#;

/// One node running the external role `listener` and the built-in
/// `storage`.
fn listening_topology(exec: &Path) -> Arc<Topology> {
    topology(&format!(
        "
cluster: c
replicasets:
  s1:
    roles: [storage, listener]
    nodes: {{ a: {{ address: 127.0.0.1:3301 }} }}
roles:
  listener: {{ exec: {} }}
",
        exec.display()
    ))
}

#[tokio::test]
async fn roles_hear_when_the_cluster_is_up_and_an_external_role_once() {
    let dir = tempfile::tempdir().unwrap();
    let exec = script(dir.path(), "listener", HEARING_ROLE);
    let heard = || support::read(&dir.path().join("heard"));
    let a = RoleSet::new(identity("a"), Registry::builtin(), false);
    assert_eq!(a.cluster_state(), ClusterState::Assembling);

    // Told before any role runs: nothing to call, but a role started
    // afterwards finds the state in its environment, and is not called
    // again for it.
    let report = a.set_cluster_state(ClusterState::Up).await;
    assert!(report.steps.is_empty(), "{report:?}");
    let report = a.apply(listening_topology(&exec), None).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_eq!(heard(), "apply (COHORT_CLUSTER_STATE=up)\n");
    let report = a.set_cluster_state(ClusterState::Up).await;
    assert!(report.steps.is_empty(), "the same state again: {report:?}");

    // A change reaches every running role, in start order; the external
    // one as `EXEC cluster-state STATE`.
    let report = a.set_cluster_state(ClusterState::Assembling).await;
    assert!(report.is_ok(), "{:?}", report.result());
    let steps: Vec<(&str, RoleAction)> = report
        .steps
        .iter()
        .map(|s| (s.role.as_str(), s.action))
        .collect();
    assert_eq!(
        steps,
        [
            ("storage", RoleAction::ClusterStateChange),
            ("listener", RoleAction::ClusterStateChange)
        ]
    );
    a.set_cluster_state(ClusterState::Up).await;
    assert_eq!(
        heard(),
        "apply (COHORT_CLUSTER_STATE=up)\n\
         cluster-state assembling (COHORT_CLUSTER_STATE=assembling)\n\
         cluster-state up (COHORT_CLUSTER_STATE=up)\n"
    );

    let report = a.stop_all().await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert!(
        heard().ends_with("stop (COHORT_CLUSTER_STATE=up)\n"),
        "{}",
        heard()
    );
}

/// A compiled-in role hears the change and reads the state from its
/// context.
#[tokio::test]
async fn a_role_context_follows_the_cluster_state() {
    let calls: Calls = Arc::default();
    let a = RoleSet::new(identity("a"), recording(&calls, &[]), false);
    let t = topology(
        "cluster: c\nreplicasets:\n  s1:\n    roles: [storage]\n    nodes: { a: { address: 127.0.0.1:3301 } }\n",
    );
    a.apply(t, None).await;
    take(&calls);
    a.set_cluster_state(ClusterState::Up).await;
    assert_eq!(take(&calls), ["cluster storage up"]);
}

#[tokio::test]
async fn an_external_role_past_its_deadline_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let exec = script(
        dir.path(),
        "slow",
        r#"dir=$(dirname "$0")
echo $$ > "$dir/sh.pid"
sleep 60 &
echo $! > "$dir/sleep.pid"
wait
"#,
    );
    let t = slow_topology(&exec, "300ms");
    let a = RoleSet::new(identity("a"), Registry::builtin(), false);
    let refused = a.validate_all(&t, None, None).await.unwrap_err();
    assert_eq!(
        refused.failures[0].reason,
        format!("{} validate timed out after 300ms (killed)", exec.display())
    );
    let pid = |name: &str| -> i32 {
        support::read(&dir.path().join(name))
            .trim()
            .parse()
            .expect("the script wrote its pids")
    };
    for name in ["sh.pid", "sleep.pid"] {
        let pid = pid(name);
        support::wait_until(
            Duration::from_secs(5),
            "the role's processes to die",
            || (!support::process_alive(pid)).then_some(()),
        );
    }
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(30));
}

/// A stop (SIGTERM of the agent) must not wait for a validation in
/// progress: the roles are asked without the set's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_a_validation_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let exec = script(
        dir.path(),
        "slow",
        r#"dir=$(dirname "$0")
if [ "$1" = validate ]; then touch "$dir/validating"; sleep 60; fi
"#,
    );
    let t = slow_topology(&exec, "60s");
    let a = Arc::new(RoleSet::new(identity("a"), Registry::builtin(), false));
    let validating = {
        let (a, t) = (a.clone(), t.clone());
        tokio::spawn(async move { a.validate_all(&t, None, None).await })
    };
    let marker = dir.path().join("validating");
    support::wait_until(Duration::from_secs(20), "the validation to start", || {
        marker.exists().then_some(())
    });
    let stopped = tokio::time::timeout(Duration::from_secs(30), a.stop_all()).await;
    assert!(stopped.is_ok(), "stop_all waited for the validation");
    assert!(
        !validating.is_finished(),
        "the validation ended before the stop"
    );
    validating.abort();
}

#[tokio::test]
async fn an_external_role_that_cannot_run_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let a = RoleSet::new(identity("a"), Registry::builtin(), false);
    let refused = a
        .validate_all(&billing_topology(&missing, "none"), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.failures[0].reason,
        format!(
            "cannot run {}: No such file or directory",
            missing.display()
        )
    );
}

// ---------------------------------------------------------- the http role

/// Four nodes of one host (127.0.0.1), each with its own `RoleSet`.
fn http_topology(listen: &[(&str, Option<u16>)]) -> Arc<Topology> {
    let listen: Vec<String> = listen
        .iter()
        .map(|(node, port)| match port {
            Some(port) => format!("{node}: {port}"),
            None => format!("{node}: null"),
        })
        .collect();
    topology(&format!(
        "
cluster: c
replicasets:
  s1:
    roles: [http]
    nodes:
      a: {{ address: 127.0.0.1:3301 }}
      b: {{ address: 127.0.0.1:3302 }}
  s2:
    roles: [http, storage]
    nodes:
      c: {{ address: 127.0.0.1:3303 }}
      d: {{ address: 127.0.0.1:3304 }}
roles:
  http:
    listen: {{ {} }}
",
        listen.join(", ")
    ))
}

struct Node {
    id: NodeIdentity,
    roles: RoleSet,
}

fn nodes(registry: impl Fn() -> Registry) -> Vec<Node> {
    ["a", "b", "c", "d"]
        .into_iter()
        .map(|name| {
            let id = identity(name);
            Node {
                roles: RoleSet::new(id.clone(), registry(), false),
                id,
            }
        })
        .collect()
}

/// Validates on every node, then applies on all at once (as a commit
/// does); panics with the reasons if any refuses or fails.
async fn change(nodes: &[Node], new: &Arc<Topology>, old: Option<&Topology>) {
    for node in nodes {
        if let Err(e) = node.roles.validate_all(new, old, None).await {
            panic!("node {} refuses: {e}", node.id.name);
        }
    }
    let reports =
        futures_util::future::join_all(nodes.iter().map(|n| n.roles.apply(new.clone(), None)))
            .await;
    for (node, report) in nodes.iter().zip(reports) {
        assert!(
            report.is_ok(),
            "node {}: {:?}",
            node.id.name,
            report.result()
        );
    }
}

async fn hello(port: u16) -> Option<serde_json::Value> {
    let body = tokio::task::spawn_blocking(move || support::http_get(support::addr(port), "/"))
        .await
        .unwrap()?;
    Some(serde_json::from_str(&body).expect("a JSON body"))
}

async fn assert_serves(port: u16, node: &Node) {
    assert_eq!(
        hello(port).await,
        Some(serde_json::json!({ "name": node.id.name, "uuid": node.id.uuid.to_string() })),
        "port {port} should serve node {}",
        node.id.name
    );
}

async fn assert_closed(port: u16) {
    let refused = tokio::task::spawn_blocking(move || {
        TcpStream::connect_timeout(&support::addr(port), Duration::from_secs(2)).is_err()
    })
    .await
    .unwrap();
    assert!(refused, "nothing should listen on port {port}");
}

/// A connection opened now and used later: answered only if the server
/// that accepted it was never restarted in between.
struct Idle(TcpStream);

impl Idle {
    fn open(port: u16) -> Idle {
        Idle(TcpStream::connect(support::addr(port)).expect("connect"))
    }

    async fn still_answered(self) -> bool {
        let mut stream = self.0;
        tokio::task::spawn_blocking(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let sent = stream
                .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                .is_ok();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            sent && answer.starts_with("HTTP/1.0 200")
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_role_moves_swaps_and_switches_off_ports() {
    capture();
    let p = support::free_ports(5);
    let nodes = nodes(Registry::builtin);
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);

    let t1 = http_topology(&[
        ("a", Some(p)),
        ("b", Some(p + 1)),
        ("c", Some(p + 2)),
        ("d", Some(p + 3)),
    ]);
    change(&nodes, &t1, None).await;
    for (i, node) in nodes.iter().enumerate() {
        assert_serves(p + i as u16, node).await;
    }
    assert_eq!(hello(p).await.unwrap()["name"], "a");

    // a moves, b and c swap, d switches off: all in one change.
    let untouched = Idle::open(p + 3);
    let t2 = http_topology(&[
        ("a", Some(p + 4)),
        ("b", Some(p + 2)),
        ("c", Some(p + 1)),
        ("d", None),
    ]);
    change(&nodes, &t2, Some(&t1)).await;
    assert_serves(p + 4, a).await;
    assert_serves(p + 2, b).await;
    assert_serves(p + 1, c).await;
    assert_closed(p).await;
    assert_closed(p + 3).await;
    assert!(!untouched.still_answered().await, "d's server is gone");

    // Unchanged entries and a node left out of `listen` do nothing: the
    // servers keep running (a connection they accepted is still served).
    let kept_a = Idle::open(p + 4);
    let kept_b = Idle::open(p + 2);
    let t3 = http_topology(&[("b", Some(p + 2)), ("c", Some(p + 1)), ("d", None)]);
    change(&nodes, &t3, Some(&t2)).await;
    assert!(kept_a.still_answered().await);
    assert!(kept_b.still_answered().await);
    assert_serves(p + 4, a).await;

    // d comes back on its old port.
    let t4 = http_topology(&[("b", Some(p + 2)), ("c", Some(p + 1)), ("d", Some(p + 3))]);
    change(&nodes, &t4, Some(&t3)).await;
    assert_serves(p + 3, d).await;

    for node in &nodes {
        assert!(node.roles.stop_all().await.is_ok());
    }
    for port in p..p + 5 {
        assert_closed(port).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_role_refuses_a_port_held_outside_the_cluster() {
    capture();
    let p = support::free_ports(3);
    let nodes = nodes(|| {
        Registry::builtin().with("http", || {
            Arc::new(HttpRole::new().with_port_wait(Duration::from_secs(1)))
        })
    });
    let (a, b) = (&nodes[0], &nodes[1]);
    let t1 = http_topology(&[("a", Some(p)), ("b", Some(p + 1))]);
    change(&nodes, &t1, None).await;

    let outsider = std::net::TcpListener::bind(support::addr(p + 2)).unwrap();
    let t2 = http_topology(&[("a", Some(p + 2)), ("b", Some(p + 1))]);
    let refused = a
        .roles
        .validate_all(&t2, Some(&t1), None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "role `http`: Failed to change port from {p} to {}: 127.0.0.1:{} is in use by another process",
            p + 2,
            p + 2
        )
    );
    assert!(logged_line(
        "WARN",
        &format!("Failed to change port from {p} to {}", p + 2)
    ));
    b.roles.validate_all(&t2, Some(&t1), None).await.unwrap();

    // Applied regardless (as if the port was taken after the vote): the
    // apply waits its bounded time (the holder might be a node giving the
    // port up), fails, logs it, and the old server keeps serving.
    let report = a.roles.apply(t2.clone(), None).await;
    assert_eq!(
        report.result().unwrap_err(),
        format!(
            "role `http` apply: Failed to change port from {p} to {}: 127.0.0.1:{} was still in use after 1s",
            p + 2,
            p + 2
        )
    );
    assert!(logged_line(
        "ERROR",
        &format!("Failed to change port from {p} to {}", p + 2)
    ));
    assert_serves(p, a).await;

    // The next apply fixes it once the port is free.
    drop(outsider);
    let report = a.roles.apply(t2.clone(), None).await;
    assert!(report.is_ok(), "{:?}", report.result());
    assert_serves(p + 2, a).await;
    assert_closed(p).await;

    // Two nodes of one host on one port: a node left out of `listen` keeps
    // its port, so b may not take it.
    let t3 = http_topology(&[("b", Some(p + 2))]);
    let refused = b
        .roles
        .validate_all(&t3, Some(&t2), None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.failures[0].reason,
        format!(
            "Failed to change port from {} to {}: port {} on host 127.0.0.1 is also taken by node `a`",
            p + 1,
            p + 2,
            p + 2
        )
    );

    for node in &nodes {
        node.roles.stop_all().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_role_waits_a_bounded_time_for_a_port_a_peer_gives_up() {
    capture();
    let p = support::free_ports(2);
    let wait = Duration::from_secs(2);
    let nodes = nodes(|| {
        Registry::builtin().with("http", move || {
            Arc::new(HttpRole::new().with_port_wait(wait))
        })
    });
    let (a, b) = (&nodes[0], &nodes[1]);
    let t1 = http_topology(&[("a", Some(p)), ("b", Some(p + 1))]);
    change(&nodes[..2], &t1, None).await;

    // a takes b's port, which b gives up in the same change: valid on both.
    let t2 = http_topology(&[("a", Some(p + 1)), ("b", None)]);
    a.roles.validate_all(&t2, Some(&t1), None).await.unwrap();
    b.roles.validate_all(&t2, Some(&t1), None).await.unwrap();

    // b never gets to apply: a gives up after its wait, says so, and keeps
    // serving on its old port all along.
    let waiting = format!("waiting for the port to be free addr=127.0.0.1:{}", p + 1);
    let started = Instant::now();
    let report = a.roles.apply(t2.clone(), None).await;
    assert!(started.elapsed() >= wait);
    assert_eq!(
        report.result().unwrap_err(),
        format!(
            "role `http` apply: Failed to change port from {p} to {}: 127.0.0.1:{} was still in use after 2s",
            p + 1,
            p + 1
        )
    );
    assert!(logged_line(
        "ERROR",
        &format!("Failed to change port from {p} to {}", p + 1)
    ));
    assert_eq!(logs().matches(&waiting).count(), 1);
    assert_serves(p, a).await;
    assert_serves(p + 1, b).await;

    // The next apply: b switches off while a waits, and a gets the port.
    let (late_a, late_b) = tokio::join!(a.roles.apply(t2.clone(), None), async {
        wait_logged(&waiting, 2).await;
        b.roles.apply(t2.clone(), None).await
    });
    assert!(late_a.is_ok(), "{:?}", late_a.result());
    assert!(late_b.is_ok(), "{:?}", late_b.result());
    assert_serves(p + 1, a).await;
    assert_closed(p).await;

    for node in &nodes {
        node.roles.stop_all().await;
    }
}

/// Waits (with a deadline) until `text` was logged `count` times.
async fn wait_logged(text: &str, count: usize) {
    let text = text.to_string();
    tokio::task::spawn_blocking(move || {
        support::wait_until(Duration::from_secs(5), &text, || {
            (logs().matches(&text).count() >= count).then_some(())
        })
    })
    .await
    .unwrap();
}
