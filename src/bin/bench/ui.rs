//! `ui`: the web page (`/ui`) at scale, for issue 9. Starts N agents
//! (`cohort agent`, found next to this binary) sharing one topology:
//! replica sets of `--set-size`, failover mode `raft`, the first
//! `--voters` nodes candidates. Waits until every node lists all N alive,
//! names one leader and a master for every set, and has version 1
//! committed, then lets the cluster settle. Then loads the first node's
//! `/ui` in headless Chromium (driven over the DevTools protocol, see
//! `chromium.rs`) and measures:
//!
//! - *first render*: from the navigation's start to the members table
//!   holding all N rows, as the page itself marks it (`performance.now()`),
//!   and as seen from outside (Page.navigate → N rows, polled);
//! - *load bytes*: every response of the load as the browser's network
//!   layer counts it (DevTools `Network.loadingFinished`), per URL, and the
//!   JSON bodies as the page read them;
//! - *quiet window*: for `--quiet-seconds`, the requests the page makes
//!   (none: it does not poll), the body bytes it reads (its own count:
//!   Chromium's network events count nothing of a streamed body while it
//!   lasts), and the events by kind;
//! - *a kill*: one agent SIGKILLed; from the kill to the node the page
//!   talks to reporting it suspect and dead (its own events' `at_ms`), and
//!   to the page showing it (`cohortUi.shown`, same clock);
//! - *reload*: the page loaded again (its files answered 304 by ETag).
//!
//! Cartridge's WebUI polled ~300 KB every 3 s; the report puts our quiet
//! window next to that.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::chromium::Browser;
use crate::common::{self, round1, sweep, unix_ms_now, Agent};
use crate::raft::{alive_count, lay_out, topology_text, Node};

#[derive(clap::Args)]
pub struct UiArgs {
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Nodes per replica set.
    #[arg(long, default_value_t = 3)]
    set_size: usize,
    /// The first this many nodes are `election: candidate`; the rest `off`.
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Wait after the cluster is whole, before the page loads (join and
    /// payload updates still spreading).
    #[arg(long, default_value_t = 15)]
    settle_seconds: u64,
    /// The quiet window: what the page receives while nothing happens.
    #[arg(long, default_value_t = 60)]
    quiet_seconds: u64,
    /// Save a screenshot of the page (PNG) after the kill.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Then SIGKILL the second half of the agents at once and start them
    /// again, the page open all along (what took Cartridge's WebUI 15
    /// minutes to load after).
    #[arg(long)]
    restart_half: bool,
    /// The browser [default: `COHORT_CHROMIUM`, else chromium on PATH].
    #[arg(long)]
    chromium: Option<PathBuf>,
    /// The agents' log level (each node logs to its own file).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Keep the scratch dir (configs, data, logs) and say where.
    #[arg(long)]
    keep: bool,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

/// Boot: full membership, a leader, every master, version 1 everywhere.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// The page showing all N rows.
const RENDER_DEADLINE: Duration = Duration::from_secs(60);
/// A killed agent shown dead.
const DEAD_DEADLINE: Duration = Duration::from_secs(120);
const SWEEP_THREADS: usize = 8;

pub fn ui(args: UiArgs, root: &Path) -> anyhow::Result<()> {
    let cohort = common::cohort_binary(args.cohort.as_deref())?;
    let chromium = match args.chromium.clone().or_else(crate::chromium::find) {
        Some(path) => path,
        None => {
            bail!("no Chromium: install it (Debian: apt-get install chromium), or pass --chromium")
        }
    };
    if args.agents < 3 || args.voters < 1 || args.voters > args.agents || args.set_size < 1 {
        bail!("need at least 3 agents, 1 to N voters, and sets of at least 1");
    }
    common::run_in(root, args.keep, || run(&args, &cohort, &chromium, root))
}

/// `GET path` as JSON (a 200 only).
fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    serde_json::from_str(&common::http_get(addr, path)?).ok()
}

fn check_running(agents: &mut [Agent], root: &Path) -> anyhow::Result<()> {
    for agent in agents.iter_mut() {
        if let Ok(Some(exit)) = agent.child.try_wait() {
            let log =
                fs::read_to_string(root.join(&agent.name).join("agent.log")).unwrap_or_default();
            let tail = common::last_lines(&log, 40);
            bail!(
                "agent {} exited ({exit}); the end of its log:\n{}",
                agent.name,
                tail
            );
        }
    }
    Ok(())
}

/// Polls `check` until it gives a value, failing after `limit` with what
/// it said last.
fn wait<T>(
    limit: Duration,
    what: &str,
    agents: &mut [Agent],
    root: &Path,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        check_running(agents, root)?;
        match check() {
            Ok(value) => return Ok(value),
            Err(why) if started.elapsed() > limit => {
                bail!("{what}: not within {} s: {why}", limit.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What the browser's network layer saw, per request.
#[derive(Default)]
struct Request {
    url: String,
    status: Option<u64>,
    /// `Network.loadingFinished`: everything received, headers included.
    finished_bytes: Option<f64>,
    /// `Network.dataReceived` so far (a stream that has not finished).
    data_bytes: f64,
}

#[derive(Default)]
struct Network {
    requests: BTreeMap<String, Request>,
    /// Requests sent, in order: (request id, when taken from the pipe).
    sent: Vec<String>,
}

impl Network {
    fn add(&mut self, events: Vec<Value>) {
        for event in events {
            let params = &event["params"];
            let id = params["requestId"].as_str().unwrap_or("").to_string();
            match event["method"].as_str().unwrap_or("") {
                "Network.requestWillBeSent" => {
                    self.sent.push(id.clone());
                    let request = self.requests.entry(id).or_default();
                    request.url = params["request"]["url"].as_str().unwrap_or("").into();
                }
                "Network.responseReceived" => {
                    self.requests.entry(id).or_default().status =
                        params["response"]["status"].as_u64();
                }
                "Network.dataReceived" => {
                    self.requests.entry(id).or_default().data_bytes +=
                        params["encodedDataLength"].as_f64().unwrap_or(0.0);
                }
                "Network.loadingFinished" => {
                    self.requests.entry(id).or_default().finished_bytes =
                        params["encodedDataLength"].as_f64();
                }
                _ => {}
            }
        }
    }

    /// Requests sent since `from` (an index into `sent`): URL, status,
    /// bytes on the wire.
    fn since(&self, from: usize) -> (Vec<Value>, f64) {
        let mut total = 0.0;
        let list = self.sent[from..]
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(|r| {
                let bytes = r.finished_bytes.unwrap_or(r.data_bytes);
                total += bytes;
                let path = r
                    .url
                    .split_once("//")
                    .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
                    .unwrap_or_else(|| r.url.clone());
                json!({
                    "path": path,
                    "status": r.status,
                    "bytes": bytes,
                    "finished": r.finished_bytes.is_some(),
                })
            })
            .collect();
        (list, total)
    }
}

const ROWS: &str = "document.querySelectorAll('#members tbody tr').length";

fn run(args: &UiArgs, cohort: &Path, chromium: &Path, root: &Path) -> anyhow::Result<Value> {
    let loadavg_at_start = common::loadavg();
    common::write_gossip_key(root)?;
    let sets = args.agents.div_ceil(args.set_size);
    let nodes = lay_out(args.agents, args.voters, args.set_size, root)?;
    let text = topology_text(&nodes, "1s");
    let mut agents: Vec<Agent> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        fs::create_dir_all(&node.dir)?;
        fs::write(node.dir.join("topology.yaml"), &text)?;
        let join = nodes[if i == 0 { 1 } else { 0 }].bind;
        let config = format!(
            "node: {name}\ncluster: bench\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{join}]\n\
             gossip: {{ key_file: {key} }}\napi: {{ http: {api}, socket: null }}\nlog: {{ level: {level}, format: text }}\n",
            name = node.name,
            bind = node.bind,
            data = node.dir.join("data").display(),
            topology = node.dir.join("topology.yaml").display(),
            key = root.join("gossip.key").display(),
            api = node.api,
            level = args.log_level,
        );
        fs::write(node.dir.join("cohort.yaml"), config)?;
        agents.push(Agent {
            name: node.name.clone(),
            api: node.api,
            child: common::spawn_agent(cohort, &node.dir)?,
        });
    }
    let started = Instant::now();
    eprintln!(
        "bench: {} agents started ({sets} replica sets, {} candidates); waiting for full membership",
        args.agents, args.voters
    );
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    let n = args.agents;
    wait(BOOT_DEADLINE, "full membership", &mut agents, root, || {
        let counts = sweep(&apis, SWEEP_THREADS, alive_count);
        match counts.iter().position(|c| *c != Some(n)) {
            None => Ok(()),
            Some(i) => Err(format!("{} sees {:?} alive", nodes[i].name, counts[i])),
        }
    })?;
    let membership_s = started.elapsed().as_secs_f64();
    eprintln!("bench: full membership after {membership_s:.1} s; waiting for the leader, masters and version 1");
    let page_api = nodes[0].api;
    wait(
        BOOT_DEADLINE,
        "the group and version 1",
        &mut agents,
        root,
        || {
            let leaders = get_json(page_api, "/v1/leaders").ok_or("no /v1/leaders")?;
            if leaders["leader"]["name"].as_str().unwrap_or("").is_empty() {
                return Err("no leader".into());
            }
            let masters = leaders["masters"].as_object().map_or(0, |m| m.len());
            if masters != sets {
                return Err(format!("{masters} masters of {sets}"));
            }
            let versions = sweep(&apis, SWEEP_THREADS, |api| {
                get_json(api, "/v1/status").and_then(|s| s["config_version"].as_u64())
            });
            match versions.iter().position(|v| *v != Some(1)) {
                None => Ok(()),
                Some(i) => Err(format!("{} has version {:?}", nodes[i].name, versions[i])),
            }
        },
    )?;
    let ready_s = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: whole after {ready_s:.1} s; settling {} s",
        args.settle_seconds
    );
    std::thread::sleep(Duration::from_secs(args.settle_seconds));
    check_running(&mut agents, root)?;

    let mut browser = Browser::launch(
        chromium,
        &root.join("chromium"),
        &root.join("chromium.log"),
        common::spawn,
    )?;
    for domain in ["Page.enable", "Runtime.enable", "Network.enable"] {
        browser.call(domain, json!({}))?;
    }
    let mut network = Network::default();
    network.add(browser.take_events());

    // The load.
    let url = format!("http://{page_api}/ui");
    let navigate_at = Instant::now();
    browser.navigate(&url)?;
    let first = browser
        .wait_for(
            &format!("cohortUi.firstRender !== null && {ROWS} >= {n} && {ROWS}"),
            RENDER_DEADLINE,
        )
        .map_err(|last| anyhow::anyhow!("the page did not show {n} rows: {last}"))?;
    let seen_ms = navigate_at.elapsed().as_secs_f64() * 1000.0;
    let page = browser.evaluate(
        "(() => { const nav = performance.getEntriesByType('navigation')[0]; \
         return { firstRender: cohortUi.firstRender, rows: cohortUi.firstRenderRows, \
         domContentLoaded: nav ? nav.domContentLoadedEventEnd : null, \
         stats: cohortUi.stats }; })()",
    )?;
    eprintln!(
        "bench: {first} rows; first render at {} ms (page), seen after {seen_ms:.0} ms",
        page["firstRender"]
    );
    // The load's responses finish; the stream stays open.
    browser
        .wait_for(
            "document.getElementById('conn').dataset.state === 'live'",
            RENDER_DEADLINE,
        )
        .map_err(|last| anyhow::anyhow!("the page did not go live: {last}"))?;
    std::thread::sleep(Duration::from_secs(2));
    network.add(browser.take_events());
    let (load_requests, load_bytes) = network.since(0);

    // The quiet window.
    eprintln!("bench: quiet window {} s", args.quiet_seconds);
    let quiet_from = network.sent.len();
    let stats_before = browser.evaluate("JSON.parse(JSON.stringify(cohortUi.stats))")?;
    let quiet_started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.quiet_seconds));
    let quiet_s = quiet_started.elapsed().as_secs_f64();
    network.add(browser.take_events());
    let stats_after = browser.evaluate("JSON.parse(JSON.stringify(cohortUi.stats))")?;
    let (quiet_requests, _) = network.since(quiet_from);
    let delta = |key: &str| {
        stats_after[key].as_f64().unwrap_or(0.0) - stats_before[key].as_f64().unwrap_or(0.0)
    };
    let kinds_delta: BTreeMap<String, f64> = stats_after["kinds"]
        .as_object()
        .map(|after| {
            after
                .iter()
                .map(|(k, v)| {
                    let before = stats_before["kinds"][k].as_f64().unwrap_or(0.0);
                    (k.clone(), v.as_f64().unwrap_or(0.0) - before)
                })
                .filter(|(_, d)| *d > 0.0)
                .collect()
        })
        .unwrap_or_default();
    let quiet_body_bytes = delta("streamBytes") + delta("loadBytes");

    // A kill: the last node (not a candidate, not the page's node).
    let victim = nodes[n - 1].name.clone();
    eprintln!("bench: SIGKILL {victim}");
    let stream_bytes_before_kill = stats_after["streamBytes"].as_f64().unwrap_or(0.0);
    let killed_ms = unix_ms_now();
    common::stop(&mut agents[n - 1].child);
    let shown = |status: &str| {
        format!(
            "cohortUi.shown.find(s => s.name === '{victim}' && s.status === '{status}') || null"
        )
    };
    let dead = browser
        .wait_for(&shown("dead"), DEAD_DEADLINE)
        .map_err(|last| anyhow::anyhow!("the page did not show {victim} dead: {last}"))?;
    let suspect = browser.evaluate(&shown("suspect"))?;
    let kill_stats = browser.evaluate("cohortUi.stats")?;
    let after_kill = |entry: &Value, key: &str| entry[key].as_f64().map(|v| round1(v - killed_ms));
    let kill = json!({
        "victim": victim,
        "node_reported_suspect_ms": after_kill(&suspect, "at_ms"),
        "page_showed_suspect_ms": after_kill(&suspect, "shown_ms"),
        "node_reported_dead_ms": after_kill(&dead, "at_ms"),
        "page_showed_dead_ms": after_kill(&dead, "shown_ms"),
        "page_behind_node_ms": match (dead["shown_ms"].as_f64(), dead["at_ms"].as_f64()) {
            (Some(shown), Some(at)) => Some(round1(shown - at)),
            _ => None,
        },
        "stream_body_bytes_until_dead": kill_stats["streamBytes"].as_f64().unwrap_or(0.0) - stream_bytes_before_kill,
    });
    eprintln!("bench: kill {kill}");
    if let Some(path) = &args.screenshot {
        fs::write(path, browser.screenshot()?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: screenshot in {}", path.display());
    }

    // A reload: the page's files come back 304 (ETag), the state anew.
    network.add(browser.take_events());
    let reload_from = network.sent.len();
    let reload_at = Instant::now();
    browser.call("Page.reload", json!({}))?;
    browser
        .wait_for(
            &format!(
                "window.cohortUi && cohortUi.firstRender !== null && {ROWS} >= {}",
                n - 1
            ),
            RENDER_DEADLINE,
        )
        .map_err(|last| anyhow::anyhow!("the reloaded page did not show its rows: {last}"))?;
    let reload_seen_ms = reload_at.elapsed().as_secs_f64() * 1000.0;
    let reload_render = browser.evaluate("cohortUi.firstRender")?;
    std::thread::sleep(Duration::from_secs(2));
    network.add(browser.take_events());
    let (reload_requests, reload_bytes) = network.since(reload_from);

    let restart = if args.restart_half {
        Some(restart_half(
            &mut browser,
            &mut network,
            &mut agents,
            &nodes,
            cohort,
        )?)
    } else {
        None
    };
    drop(browser);

    let cartridge_bytes_per_s = 300.0 * 1024.0 / 3.0;
    let quiet_bytes_per_s = quiet_body_bytes / quiet_s;
    Ok(json!({
        "scenario": "ui",
        "agents": n,
        "replica_sets": sets,
        "candidates": args.voters,
        "membership_s": round1(membership_s),
        "whole_s": round1(ready_s),
        "settle_s": args.settle_seconds,
        "load": {
            "first_render_ms": page["firstRender"],
            "rows_at_first_render": page["rows"],
            "dom_content_loaded_ms": page["domContentLoaded"],
            "navigate_to_rows_seen_ms": round1(seen_ms),
            "wire_bytes": load_bytes,
            "json_body_bytes": page["stats"]["loadBytes"],
            "requests": load_requests,
        },
        "quiet": {
            "seconds": round1(quiet_s),
            "requests": quiet_requests.len(),
            "request_list": quiet_requests,
            "full_loads": delta("loads"),
            "events": delta("events"),
            "events_by_kind": kinds_delta,
            "body_bytes": quiet_body_bytes,
            "bytes_per_s": round1(quiet_bytes_per_s),
            "cartridge_webui_bytes_per_s": round1(cartridge_bytes_per_s),
        },
        "kill": kill,
        "restart_half": restart,
        "reload": {
            "first_render_ms": reload_render,
            "navigate_to_rows_seen_ms": round1(reload_seen_ms),
            "wire_bytes": reload_bytes,
            "requests": reload_requests,
        },
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": common::loadavg(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "chromium": Command::new(chromium)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
    }))
}

/// How many rows the page shows with `status`.
fn rows_with(status: &str) -> String {
    format!(
        "[...document.querySelectorAll('#members tbody tr')].filter(tr => tr.dataset.status === '{status}').length"
    )
}

/// SIGKILLs the second half of the agents (n/2+1..n; the last is dead
/// already) at once, waits until the page shows them all dead, starts them
/// again and waits until it shows all N alive; then loads the page anew.
/// What the page received meanwhile, and how far it was behind the node
/// it talks to.
fn restart_half(
    browser: &mut Browser,
    network: &mut Network,
    agents: &mut [Agent],
    nodes: &[Node],
    cohort: &Path,
) -> anyhow::Result<Value> {
    let n = nodes.len();
    let half: Vec<usize> = (n / 2..n).collect();
    let page_api = nodes[0].api;
    network.add(browser.take_events());
    let from = network.sent.len();
    let before = browser.evaluate("JSON.parse(JSON.stringify(cohortUi.stats))")?;
    eprintln!("bench: SIGKILL {} agents at once", half.len() - 1);
    for &i in &half[..half.len() - 1] {
        common::stop(&mut agents[i].child);
    }
    // Every 100 ms: the page's count, and the node's own (one request).
    let watch = |browser: &mut Browser, status: &str, want: usize| -> anyhow::Result<(f64, f64)> {
        let started = Instant::now();
        let (mut page_at, mut node_at) = (None, None);
        while page_at.is_none() || node_at.is_none() {
            if started.elapsed() > BOOT_DEADLINE {
                bail!(
                    "the page did not show {want} {status} within {} s",
                    BOOT_DEADLINE.as_secs()
                );
            }
            if page_at.is_none()
                && browser.evaluate(&rows_with(status))?.as_u64() == Some(want as u64)
            {
                page_at = Some(started.elapsed().as_secs_f64());
            }
            if node_at.is_none() {
                let count = get_json(page_api, "/v1/members").map_or(0, |v| {
                    v["members"]
                        .as_array()
                        .map_or(0, |m| m.iter().filter(|m| m["status"] == status).count())
                });
                if count == want {
                    node_at = Some(started.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((page_at.unwrap_or(0.0), node_at.unwrap_or(0.0)))
    };
    let (page_dead_s, node_dead_s) = watch(browser, "dead", half.len())?;
    eprintln!("bench: all {} dead on the page after {page_dead_s:.1} s (node: {node_dead_s:.1} s); starting them again", half.len());
    for &i in &half {
        agents[i].child = common::spawn_agent(cohort, &nodes[i].dir)?;
    }
    let (page_alive_s, node_alive_s) = watch(browser, "alive", n)?;
    eprintln!(
        "bench: all {n} alive on the page after {page_alive_s:.1} s (node: {node_alive_s:.1} s)"
    );
    let after = browser.evaluate("JSON.parse(JSON.stringify(cohortUi.stats))")?;
    network.add(browser.take_events());
    let (requests, _) = network.since(from);
    let delta =
        |key: &str| after[key].as_f64().unwrap_or(0.0) - before[key].as_f64().unwrap_or(0.0);
    let kinds: BTreeMap<String, f64> = after["kinds"]
        .as_object()
        .map(|all| {
            all.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_f64().unwrap_or(0.0) - before["kinds"][k].as_f64().unwrap_or(0.0),
                    )
                })
                .filter(|(_, d)| *d > 0.0)
                .collect()
        })
        .unwrap_or_default();

    // A fresh load now.
    let reload_at = Instant::now();
    browser.call("Page.reload", json!({}))?;
    browser
        .wait_for(
            &format!(
                "window.cohortUi && cohortUi.firstRender !== null && {} === {n}",
                rows_with("alive")
            ),
            RENDER_DEADLINE,
        )
        .map_err(|last| anyhow::anyhow!("the reloaded page did not show {n} alive: {last}"))?;
    let reload_seen_ms = reload_at.elapsed().as_secs_f64() * 1000.0;
    let reload_render = browser.evaluate("cohortUi.firstRender")?;
    Ok(json!({
        "killed": half.len() - 1,
        "restarted": half.len(),
        "page_all_dead_s": round1(page_dead_s),
        "node_all_dead_s": round1(node_dead_s),
        "page_all_alive_after_restart_s": round1(page_alive_s),
        "node_all_alive_after_restart_s": round1(node_alive_s),
        "events": delta("events"),
        "events_by_kind": kinds,
        "body_bytes": delta("streamBytes") + delta("loadBytes"),
        "full_loads": delta("loads"),
        "requests": requests.len(),
        "request_list": requests,
        "reload_first_render_ms": reload_render,
        "reload_navigate_to_rows_seen_ms": round1(reload_seen_ms),
    }))
}
