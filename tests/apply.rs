//! The agent's 2PC driver (`agent::apply`) in one process: 3–4 drivers,
//! each with its own data dir and a real rpc server on a loopback port,
//! finding each other through a fixed peer directory. An apply commits
//! the same version everywhere with byte-identical files; a bad text or a
//! node's roles refusing changes nothing anywhere; a node that restarts
//! keeps its committed version and takes part in the next apply.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort::agent::apply::{
    self, ApplyConfig, ApplyError, ApplyHandle, BoxFuture, Envelope, Installed, Peer,
    PeerDirectory, RoleHooks, StaticDirectory,
};
use cohort::config::Topology;
use cohort::membership::{MemberStatus, NodeId, PacketSecurity};
use cohort::rpc::{
    handler_fn, ClientConfig, ClusterAuth, Demux, DemuxConfig, Router, Routes, RpcClient,
    RpcServer, ServerConfig,
};
use cohort::twophase::{
    CoordinatorConfig, Decision, LockStatus, Message, Outcome, ParticipantConfig, Prepare,
    Proposal, TxnId, Version, Vote,
};
use tokio::net::TcpListener;
use uuid::Uuid;

mod support;

const CLUSTER: &str = "apply-test";
/// The longest any condition is waited for; only reached when broken.
const WAIT: Duration = Duration::from_secs(20);

fn auth() -> ClusterAuth {
    ClusterAuth {
        cluster: CLUSTER.into(),
        security: PacketSecurity::Plaintext,
    }
}

/// Roles that refuse every change with `reject` (when set), and remember
/// what was installed.
#[derive(Default)]
struct TestRoles {
    reject: Mutex<Option<String>>,
    installed: Mutex<Vec<Version>>,
}

impl RoleHooks for TestRoles {
    fn validate<'a>(
        &'a self,
        _new: &'a Topology,
        _old: Option<&'a Topology>,
        _version: Version,
    ) -> BoxFuture<'a, Result<(), String>> {
        let reject = self.reject.lock().unwrap().clone();
        Box::pin(async move { reject.map_or(Ok(()), Err) })
    }

    fn installed<'a>(&'a self, change: &'a Installed) -> BoxFuture<'a, Result<(), String>> {
        self.installed.lock().unwrap().push(change.version);
        Box::pin(async { Ok(()) })
    }
}

struct Node {
    id: NodeId,
    name: String,
    data: PathBuf,
    topology: PathBuf,
    roles: Arc<TestRoles>,
    handle: ApplyHandle,
    port: Demux,
}

struct Cluster {
    _dir: tempfile::TempDir,
    directory: StaticDirectory,
    client: RpcClient,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn new(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let directory = StaticDirectory::new();
        let client = RpcClient::new(auth(), ClientConfig::default());
        let mut cluster = Cluster {
            _dir: dir,
            directory,
            client,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let name = format!("n{i}");
            let data = cluster._dir.path().join(&name).join("data");
            let topology = cluster._dir.path().join(&name).join("etc/topology.yaml");
            let id = NodeId(Uuid::from_u128(0x1000 + i as u128));
            let roles = Arc::new(TestRoles::default());
            let (handle, port) = cluster
                .start(id, &name, &data, &topology, roles.clone())
                .await;
            cluster.nodes.push(Node {
                id,
                name,
                data,
                topology,
                roles,
                handle,
                port,
            });
        }
        cluster
    }

    /// Starts a driver from `data` and serves it on a new loopback port,
    /// which the directory then names for `id`.
    async fn start(
        &self,
        id: NodeId,
        name: &str,
        data: &std::path::Path,
        topology: &std::path::Path,
        roles: Arc<TestRoles>,
    ) -> (ApplyHandle, Demux) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (endpoint, inbox) = apply::channel();
        let mut router = Router::new()
            .route(apply::METHOD, endpoint.clone())
            .route(apply::COMMITTED_METHOD, endpoint.clone());
        // Every other node plays an agent from before the exchange (votes,
        // acks and answers as calls of their own), so that both paths and
        // a cluster mixing them are exercised.
        if id.0.as_u128() % 2 == 0 {
            router = router.route(apply::EXCHANGE_METHOD, endpoint);
        }
        let server = RpcServer::new(auth(), router, ServerConfig::default());
        let port = Demux::spawn(
            listener,
            Routes {
                gossip: None,
                rpc: Some(server),
            },
            DemuxConfig::default(),
        );
        let config = ApplyConfig {
            me: id,
            name: name.to_string(),
            cluster: CLUSTER.into(),
            data_dir: data.to_path_buf(),
            topology_path: topology.to_path_buf(),
            text_name: apply::text_name(topology),
            coordinator: CoordinatorConfig {
                lease: Duration::from_secs(4),
                retry: Duration::from_millis(100),
                max_retry: Duration::from_millis(500),
                ..CoordinatorConfig::default()
            },
            participant: ParticipantConfig {
                query_interval: Duration::from_millis(100),
                max_query_interval: Duration::from_millis(500),
            },
            send_deadline: Duration::from_secs(1),
        };
        let handle = apply::spawn(
            config,
            inbox,
            Arc::new(self.directory.clone()),
            self.client.clone(),
            roles,
        )
        .expect("the driver starts");
        self.directory.insert(Peer {
            id,
            name: name.to_string(),
            addr,
            status: MemberStatus::Alive,
            config: None,
        });
        (handle, port)
    }

    /// Stops node `i` (driver and port) and starts it again from its data
    /// dir, on another port.
    async fn restart(&mut self, i: usize) {
        self.nodes[i].handle.stop().await;
        let (id, name, data, topology, roles) = {
            let n = &self.nodes[i];
            (
                n.id,
                n.name.clone(),
                n.data.clone(),
                n.topology.clone(),
                n.roles.clone(),
            )
        };
        let (handle, port) = self.start(id, &name, &data, &topology, roles).await;
        let old = std::mem::replace(&mut self.nodes[i].port, port);
        old.stop().await;
        self.nodes[i].handle = handle;
    }

    /// What gossip would tell every node: each node's committed version.
    fn gossip_versions(&self) {
        for node in &self.nodes {
            let status = node.handle.status();
            self.directory
                .set_config(node.id, Some((status.version, status.hash)));
        }
    }

    /// Waits until every node runs `version` with a free lock, and
    /// returns the topology files, which must all hold `text`.
    async fn settled_at(&self, version: Version, text: &str) {
        for node in &self.nodes {
            support::eventually(WAIT, &format!("{} at version {version}", node.name), || {
                let status = node.handle.status();
                let file = std::fs::read(&node.topology).ok();
                (status.version == version
                    && status.lock == LockStatus::Free
                    && file.as_deref() == Some(text.as_bytes()))
                .then_some(())
            })
            .await;
        }
    }
}

/// A topology of nodes `n0..n{count}` in one replica set, with a comment
/// that must survive byte for byte.
fn topology(count: usize, comment: &str) -> String {
    let mut text = format!("# {comment}\ncluster: {CLUSTER}\nreplicasets:\n  s1:\n    nodes:\n");
    for i in 0..count {
        text.push_str(&format!(
            "      n{i}: {{ address: 127.0.0.1:{} }}   # node {i}\n",
            4000 + i
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_commits_the_same_version_everywhere_with_identical_files() {
    let cluster = Cluster::new(3).await;
    // n3 is in the topology but unknown to membership: reported, not waited for.
    let text = topology(4, "first version");
    let report = support::within(
        WAIT,
        "the apply",
        cluster.nodes[0].handle.apply(text.clone()),
    )
    .await
    .expect("the apply runs");
    assert_eq!(report.committed(), Some(Version(1)), "{report}");
    assert_eq!(
        report.not_reached,
        [("n3".to_string(), "unknown to membership".to_string())]
    );
    assert!(
        report.to_string().starts_with("committed version 1"),
        "{report}"
    );
    cluster.settled_at(Version(1), &text).await;
    let hashes: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.handle.status().hash)
        .collect();
    assert!(hashes
        .iter()
        .all(|h| *h == apply::config_hash(text.as_bytes())));
    for node in &cluster.nodes {
        support::eventually(WAIT, "the roles ran", || {
            (*node.roles.installed.lock().unwrap() == [Version(1)]).then_some(())
        })
        .await;
    }
    let last = cluster.nodes[0].handle.status().last.expect("a last apply");
    assert_eq!(last.committed, Some(Version(1)));

    // The same text again: nothing to do.
    let again = cluster.nodes[1].handle.apply(text.clone()).await;
    assert!(
        matches!(again, Err(ApplyError::Unchanged(Version(1)))),
        "{again:?}"
    );

    // The next version, from another coordinator.
    let text2 = topology(3, "second version");
    let report = support::within(
        WAIT,
        "the second apply",
        cluster.nodes[2].handle.apply(text2.clone()),
    )
    .await
    .expect("the apply runs");
    assert_eq!(report.committed(), Some(Version(2)), "{report}");
    cluster.settled_at(Version(2), &text2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_text_is_rejected_with_its_position_and_nothing_changes() {
    let cluster = Cluster::new(3).await;
    let text = topology(3, "good");
    let report = cluster.nodes[0].handle.apply(text.clone()).await.unwrap();
    assert_eq!(report.committed(), Some(Version(1)), "{report}");
    cluster.settled_at(Version(1), &text).await;

    let bad = format!("{text}bogus: 1\n");
    let err = cluster.nodes[1]
        .handle
        .apply(bad)
        .await
        .expect_err("a bad text is refused");
    let message = err.to_string();
    let ApplyError::Invalid(problems) = err else {
        panic!("not a validation error: {message}");
    };
    let first = problems.iter().next().unwrap().to_string();
    assert!(first.starts_with("topology.yaml:"), "{first}");
    let pos: Vec<&str> = first.splitn(4, ':').collect();
    assert!(
        pos[1].parse::<u64>().is_ok() && pos[2].parse::<u64>().is_ok(),
        "FILE:LINE:COLUMN: {first}"
    );
    let status = cluster.nodes[1].handle.status();
    let last = status.last.expect("shown in the status");
    assert_eq!(last.summary, message);
    assert_eq!(last.txn, None, "a refused text starts no txn");

    // Another cluster's topology is refused too, pointing at `cluster`.
    let other = text.replace(&format!("cluster: {CLUSTER}"), "cluster: elsewhere");
    let err = cluster.nodes[0].handle.apply(other).await.unwrap_err();
    assert!(err.to_string().starts_with("topology.yaml:2:10: "), "{err}");
    let last = cluster.nodes[0].handle.status().last.unwrap();
    assert_eq!(last.txn, None, "a refused text starts no txn");

    // Refused before anything was sent: nobody coordinates, nobody is
    // locked, every node is on version 1 with its file untouched.
    for node in &cluster.nodes {
        let status = node.handle.status();
        assert!(status.coordinating.is_empty(), "{}", node.name);
        assert_eq!(status.lock, LockStatus::Free, "{}", node.name);
    }
    cluster.settled_at(Version(1), &text).await;
}

/// A coordinator of our own on the wire (a real rpc server in the
/// directory), to put a participant in states the agent's coordinator
/// would not: a text it refuses up front, a decision held back.
struct Outsider {
    id: NodeId,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Envelope>,
    _port: Demux,
}

impl Outsider {
    async fn join(cluster: &Cluster) -> Outsider {
        let id = NodeId(Uuid::from_u128(0xc0));
        let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = RpcServer::new(
            auth(),
            Router::new().route(
                apply::METHOD,
                handler_fn(move |_, _, body| {
                    let envelope: Envelope = postcard::from_bytes(&body).unwrap();
                    let _ = tx.send(envelope);
                    async { Ok(Vec::new()) }
                }),
            ),
            ServerConfig::default(),
        );
        let port = Demux::spawn(
            listener,
            Routes {
                gossip: None,
                rpc: Some(server),
            },
            DemuxConfig::default(),
        );
        cluster.directory.insert(Peer {
            id,
            name: "outsider".into(),
            addr,
            status: MemberStatus::Alive,
            config: None,
        });
        Outsider {
            id,
            inbox,
            _port: port,
        }
    }

    async fn send(&self, cluster: &Cluster, to: NodeId, message: Message) {
        let envelope = Envelope {
            from: self.id,
            to,
            message,
        };
        let peers = cluster.directory.peers().await;
        let addr = peers.iter().find(|p| p.id == to).unwrap().addr;
        cluster
            .client
            .call(
                addr,
                apply::METHOD,
                &postcard::to_allocvec(&envelope).unwrap(),
                WAIT,
            )
            .await
            .expect("delivered");
    }

    fn prepare(&self, to: NodeId, text: &str) -> Message {
        Message::Prepare(Prepare {
            proposal: Proposal {
                txn: self.txn(),
                base: Version(0),
                version: Version(1),
                hash: apply::config_hash(text.as_bytes()),
                text: text.to_string(),
            },
            participants: vec![to, self.id],
            lease: Duration::from_secs(5),
            log: cohort::twophase::DecisionLog::Coordinator,
        })
    }

    fn txn(&self) -> TxnId {
        TxnId {
            coordinator: self.id,
            seq: 0,
        }
    }

    /// The next vote (other messages are skipped).
    async fn vote(&mut self) -> (NodeId, Vote) {
        loop {
            let envelope = support::within(WAIT, "a vote", self.inbox.recv())
                .await
                .unwrap();
            if let Message::Vote { txn, vote } = envelope.message {
                assert_eq!(txn, self.txn());
                return (envelope.from, vote);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_votes_no_on_a_bad_text_with_its_position() {
    let cluster = Cluster::new(1).await;
    let mut outsider = Outsider::join(&cluster).await;
    let node = &cluster.nodes[0];
    let text = format!(
        "cluster: {CLUSTER}\nreplicasets:\n  s1:\n    nodes:\n      n0: {{ adress: 127.0.0.1:1 }}\n"
    );
    outsider
        .send(&cluster, node.id, outsider.prepare(node.id, &text))
        .await;
    let (from, vote) = outsider.vote().await;
    assert_eq!(from, node.id);
    let Vote::No(why) = vote else {
        panic!("a yes for a bad text");
    };
    assert!(why.starts_with("topology.yaml:5:"), "{why}");
    assert_eq!(node.handle.status().version, Version(0));
    support::eventually(WAIT, "the lock is free", || {
        (node.handle.status().lock == LockStatus::Free).then_some(())
    })
    .await;
    assert!(!node.topology.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_prepared_keeps_its_promise_and_installs_the_commit() {
    let mut cluster = Cluster::new(1).await;
    let mut outsider = Outsider::join(&cluster).await;
    let id = cluster.nodes[0].id;
    let text = topology(1, "staged across a restart");
    outsider
        .send(&cluster, id, outsider.prepare(id, &text))
        .await;
    assert_eq!(outsider.vote().await, (id, Vote::Yes));

    cluster.restart(0).await;
    let status = cluster.nodes[0].handle.status();
    assert_eq!(status.version, Version(0));
    assert!(
        matches!(status.lock, LockStatus::Waiting { txn, .. } if txn == outsider.txn()),
        "{:?}",
        status.lock
    );
    // It asks us for the decision...
    let query = support::within(WAIT, "a query", outsider.inbox.recv())
        .await
        .unwrap();
    assert!(matches!(query.message, Message::Query { .. }), "{query:?}");
    // ...and installs the commit.
    outsider
        .send(
            &cluster,
            id,
            Message::Decision {
                txn: outsider.txn(),
                version: Version(1),
                decision: Decision::Commit,
            },
        )
        .await;
    cluster.settled_at(Version(1), &text).await;
    assert_eq!(
        cluster.nodes[0].handle.status().hash,
        apply::config_hash(text.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_refusing_aborts_everywhere_with_its_reason() {
    let cluster = Cluster::new(4).await;
    let text = topology(4, "v1");
    let report = cluster.nodes[0].handle.apply(text.clone()).await.unwrap();
    assert_eq!(report.committed(), Some(Version(1)), "{report}");
    cluster.settled_at(Version(1), &text).await;

    let why = "roles.http.listen: port 8080 is in use on this host";
    *cluster.nodes[2].roles.reject.lock().unwrap() = Some(why.to_string());
    let text2 = topology(4, "v2");
    let report = support::within(WAIT, "the apply", cluster.nodes[1].handle.apply(text2))
        .await
        .unwrap();
    let Outcome::Aborted { reasons } = &report.result.outcome else {
        panic!("committed although n2 refused: {report}");
    };
    assert_eq!(
        reasons.get(&cluster.nodes[2].id).map(String::as_str),
        Some(why)
    );
    assert!(report.to_string().contains(why), "{report}");
    // The first no decides: nodes that had not voted yet are named silent.
    // Everyone is back at version 1, lock released, file untouched.
    cluster.settled_at(Version(1), &text).await;
    for node in &cluster.nodes {
        assert_eq!(*node.roles.installed.lock().unwrap(), [Version(1)]);
    }

    // With the refusal lifted the same change goes through.
    *cluster.nodes[2].roles.reject.lock().unwrap() = None;
    let text3 = topology(4, "v2 again");
    let report = cluster.nodes[1].handle.apply(text3.clone()).await.unwrap();
    assert_eq!(report.committed(), Some(Version(2)), "{report}");
    cluster.settled_at(Version(2), &text3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_version_and_takes_part_again() {
    let mut cluster = Cluster::new(3).await;
    let text = topology(3, "before the restart");
    let report = cluster.nodes[0].handle.apply(text.clone()).await.unwrap();
    assert_eq!(report.committed(), Some(Version(1)), "{report}");
    cluster.settled_at(Version(1), &text).await;

    cluster.restart(1).await;
    let status = cluster.nodes[1].handle.status();
    assert_eq!(status.version, Version(1));
    assert_eq!(status.hash, apply::config_hash(text.as_bytes()));
    assert_eq!(status.lock, LockStatus::Free);

    // The restarted node coordinates the next change (its txn numbers
    // continue) and every node follows.
    let text2 = topology(3, "after the restart");
    let report = support::within(
        WAIT,
        "the apply",
        cluster.nodes[1].handle.apply(text2.clone()),
    )
    .await
    .unwrap();
    assert_eq!(report.committed(), Some(Version(2)), "{report}");
    cluster.settled_at(Version(2), &text2).await;

    // And the first coordinator, restarted, coordinates again.
    cluster.restart(0).await;
    assert_eq!(cluster.nodes[0].handle.status().version, Version(2));
    let text3 = topology(3, "third");
    let report = support::within(
        WAIT,
        "the apply",
        cluster.nodes[0].handle.apply(text3.clone()),
    )
    .await
    .unwrap();
    assert_eq!(report.committed(), Some(Version(3)), "{report}");
    assert_ne!(report.result.txn.seq, 0, "txn numbers are never reused");
    cluster.settled_at(Version(3), &text3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_does_not_block_while_a_majority_takes_part() {
    let cluster = Cluster::new(3).await;
    let text = topology(3, "v1");
    cluster.nodes[0].handle.apply(text.clone()).await.unwrap();
    cluster.settled_at(Version(1), &text).await;

    cluster.nodes[2].handle.stop().await;
    cluster
        .directory
        .set_status(cluster.nodes[2].id, MemberStatus::Dead);
    let text2 = topology(3, "v2");
    let report = support::within(
        WAIT,
        "the apply",
        cluster.nodes[0].handle.apply(text2.clone()),
    )
    .await
    .unwrap();
    assert_eq!(report.committed(), Some(Version(2)), "{report}");
    assert_eq!(report.not_reached, [("n2".to_string(), "dead".to_string())]);

    // Two of three dead: no majority of version 2, refused up front.
    cluster
        .directory
        .set_status(cluster.nodes[1].id, MemberStatus::Left);
    let err = cluster.nodes[0]
        .handle
        .apply(topology(3, "v3"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::Start(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_an_apply_catches_up_and_keeps_the_edit_it_lost() {
    let mut cluster = Cluster::new(3).await;
    let text = topology(3, "v1");
    cluster.nodes[0].handle.apply(text.clone()).await.unwrap();
    cluster.settled_at(Version(1), &text).await;

    // n2 goes down; two versions are committed without it.
    cluster.nodes[2].handle.stop().await;
    let down = cluster.nodes[2].id;
    cluster.directory.set_status(down, MemberStatus::Dead);
    for (k, comment) in ["v2", "v3"].iter().enumerate() {
        let report = support::within(
            WAIT,
            "an apply",
            cluster.nodes[0].handle.apply(topology(3, comment)),
        )
        .await
        .unwrap();
        assert_eq!(report.committed(), Some(Version(2 + k as u64)), "{report}");
    }
    // Meanwhile the operator edits the file on the node that is down.
    let edit = topology(3, "an edit made on n2 while it was down");
    std::fs::write(&cluster.nodes[2].topology, &edit).unwrap();

    // Back: gossip shows it version 3; it fetches the text and installs it,
    // and the edit it held is kept beside the file.
    cluster.restart(2).await;
    assert_eq!(cluster.nodes[2].handle.status().version, Version(1));
    let v3 = topology(3, "v3");
    support::eventually(WAIT, "n2 caught up to version 3", || {
        cluster.gossip_versions();
        let status = cluster.nodes[2].handle.status();
        let file = std::fs::read(&cluster.nodes[2].topology).ok();
        (status.version == Version(3) && file.as_deref() == Some(v3.as_bytes())).then_some(())
    })
    .await;
    let status = cluster.nodes[2].handle.status();
    assert_eq!(status.hash, apply::config_hash(v3.as_bytes()));
    assert_eq!(&*status.text, v3.as_str());
    let kept = support::eventually(WAIT, "the edit is reported", || {
        cluster.nodes[2].handle.status().kept_edits.first().cloned()
    })
    .await;
    assert!(kept.to_string_lossy().ends_with(".before-v3"), "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), edit);
    support::eventually(WAIT, "the roles ran version 3", || {
        (cluster.nodes[2].roles.installed.lock().unwrap().last() == Some(&Version(3))).then_some(())
    })
    .await;

    // And it takes part in the next apply like any node.
    let v4 = topology(3, "v4");
    let report = support::within(WAIT, "the apply", cluster.nodes[2].handle.apply(v4.clone()))
        .await
        .unwrap();
    assert_eq!(report.committed(), Some(Version(4)), "{report}");
    cluster.settled_at(Version(4), &v4).await;
}
