//! `GET /metrics` on real agents (issue 9, item 3): the Prometheus text
//! format passes `promtool check metrics`, the OpenMetrics form passes the
//! reference OpenMetrics parser (python3-prometheus-client), and the values
//! follow what happens: members alive then dead after a SIGKILL, the Raft
//! leader, applies committed and rejected, the committed version.
//!
//! Without promtool (Debian's `prometheus` package) or the parser the
//! format checks print why and pass; `COHORT_REQUIRE_PROMTOOL=1` makes a
//! missing tool a failure (CI sets it).

mod cluster;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{node, Cluster, WAIT};
use support::wait_until_or;

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET /metrics`, with an `Accept` header when given: the content type
/// and the body of a 200.
fn scrape(api: SocketAddr, accept: Option<&str>) -> Option<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {api}\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1)? != "200" {
        return None;
    }
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((content_type, body.to_string()))
}

/// Every sample of a Prometheus text body: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn required() -> bool {
    std::env::var("COHORT_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1")
}

/// Runs `program args` with `input` on stdin: exit success and the output
/// (stdout and stderr), or None when the program is not installed.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Option<(bool, String)> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// `promtool check metrics` on the text: clean means exit 0 and no output
/// (it prints lint problems and still may exit 0 for some).
fn promtool_check(text: &str) {
    match run_with_input("promtool", &["check", "metrics"], text) {
        Some((ok, output)) => {
            assert!(
                ok && output.trim().is_empty(),
                "promtool check metrics: {output}\non:\n{text}"
            );
            eprintln!(
                "promtool check metrics: clean ({} lines)",
                text.lines().count()
            );
        }
        None if required() => {
            panic!("promtool is not installed (Debian: apt-get install prometheus) and COHORT_REQUIRE_PROMTOOL=1")
        }
        None => eprintln!(
            "SKIPPED promtool check: promtool is not installed (Debian: apt-get install prometheus)"
        ),
    }
}

/// The reference OpenMetrics parser (Python's prometheus_client, strict:
/// `# EOF`, counter and unit naming, label syntax) on the text.
const OM_PARSE: &str = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
families = list(parse(sys.stdin.read()))\n\
print(len(families), 'families')\n";

fn openmetrics_check(text: &str) {
    // Debian's python3 (its prometheus_client), not a pyenv shim's.
    let has_parser = Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_parser {
        assert!(
            !required(),
            "python3-prometheus-client is not installed and COHORT_REQUIRE_PROMTOOL=1"
        );
        eprintln!("SKIPPED OpenMetrics check: /usr/bin/python3 with prometheus_client is not installed (Debian: apt-get install python3-prometheus-client)");
        return;
    }
    let (ok, output) = run_with_input("/usr/bin/python3", &["-c", OM_PARSE], text).unwrap();
    assert!(
        ok,
        "the OpenMetrics parser refused the text: {output}\non:\n{text}"
    );
    eprintln!("OpenMetrics parser: {}", output.trim());
}

/// Waits until node `i`'s scrape satisfies `check`; panics with the last
/// scrape otherwise.
fn wait_scrape(
    cluster: &Cluster,
    i: usize,
    what: &str,
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let mut last = String::new();
    wait_until_or(WAIT, || {
        let (_, text) = scrape(cluster.nodes[i].api(), None)?;
        let values = samples(&text);
        last = text;
        check(&values).then_some(values)
    })
    .unwrap_or_else(|| panic!("{what}: not seen within {WAIT:?}; last scrape:\n{last}"))
}

fn value(values: &BTreeMap<String, f64>, series: &str) -> f64 {
    values.get(series).copied().unwrap_or(-1.0)
}

#[test]
fn metrics_pass_promtool_and_follow_the_cluster() {
    let started = Instant::now();
    let mut cluster = Cluster::start(
        &[
            node("n1", "s1", "candidate"),
            node("n2", "s1", "candidate"),
            node("n3", "s2", "candidate"),
        ],
        &[],
    );
    cluster.wait_masters(&["s1", "s2"]);
    eprintln!("cluster up after {:?}", started.elapsed());

    // Every node: three alive, a leader, version 1 installed.
    for i in 0..3 {
        wait_scrape(&cluster, i, "three alive, version 1 installed", |v| {
            value(v, "cohort_members{status=\"alive\"}") == 3.0
                && value(v, "cohort_config_version") == 1.0
                && value(v, "cohort_installs_total{result=\"ok\"}") >= 1.0
                && value(v, "cohort_raft_has_leader") == 1.0
        });
    }

    // The formats, on a live scrape.
    let (content_type, text) = scrape(cluster.nodes[0].api(), None).expect("a scrape");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&text);
    let (content_type, om) = scrape(cluster.nodes[0].api(), Some(OPENMETRICS)).expect("a scrape");
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    openmetrics_check(&om);

    // The dashboard asks only for metrics the agent exports.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in dashboard_metrics() {
        // A histogram's series carry a suffix its family name has not.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| families.contains(base))
            .unwrap_or(&name);
        assert!(
            families.contains(&family),
            "packaging/grafana/cohort.json asks for {name}, which /metrics does not export"
        );
    }

    // The values agree with the JSON API.
    let values = samples(&text);
    let leaders: serde_json::Value =
        serde_json::from_str(&cluster.get_raw(0, "/v1/leaders").1).unwrap();
    let leader = format!(
        "cohort_raft_leader{{name=\"{}\",id=\"{}\"}}",
        leaders["leader"]["name"].as_str().unwrap(),
        leaders["leader"]["id"].as_str().unwrap()
    );
    assert_eq!(value(&values, &leader), 1.0, "{leader} in\n{text}");
    assert_eq!(
        value(&values, "cohort_raft_term"),
        leaders["term"].as_f64().unwrap()
    );
    let master = leaders["masters"]["s1"]["node"].as_str().unwrap();
    assert_eq!(
        value(
            &values,
            &format!("cohort_replicaset_master{{replicaset=\"s1\",node=\"{master}\"}}")
        ),
        1.0
    );
    assert!(
        value(
            &values,
            "cohort_gossip_packets_sent_total{transport=\"udp\"}"
        ) > 0.0
    );
    assert!(value(&values, "cohort_gossip_sent_bytes_total{transport=\"udp\"}") > 0.0);
    assert!(
        value(
            &values,
            "cohort_gossip_received_bytes_total{transport=\"udp\"}"
        ) > 0.0
    );
    let probes = value(&values, "cohort_gossip_probe_rtt_seconds_count");
    assert!(probes > 0.0, "{text}");
    assert_eq!(
        value(
            &values,
            "cohort_gossip_probe_rtt_seconds_bucket{le=\"+Inf\"}"
        ),
        probes
    );
    // Loopback: every direct probe answered within a second.
    assert_eq!(
        value(&values, "cohort_gossip_probe_rtt_seconds_bucket{le=\"1\"}"),
        probes
    );
    assert_eq!(
        value(
            &values,
            "cohort_gossip_packets_dropped_total{reason=\"decrypt\"}"
        ),
        0.0
    );
    assert_eq!(value(&values, "cohort_gossip_encrypted"), 1.0);
    let committed: f64 = (0..3)
        .map(|i| {
            let (_, text) = scrape(cluster.nodes[i].api(), None).unwrap();
            value(
                &samples(&text),
                "cohort_applies_total{result=\"committed\"}",
            )
        })
        .sum();
    assert_eq!(committed, 1.0, "version 1 is coordinated by one node");

    // A rejected apply and a committed one, through node 2's API. (A node
    // may have counted a start refused for want of a quorum while the
    // cluster came up: count from here.)
    let api = cluster.nodes[1].api();
    let before = samples(&scrape(api, None).unwrap().1);
    let rejected = value(&before, "cohort_applies_total{result=\"rejected\"}");
    let committed = value(&before, "cohort_applies_total{result=\"committed\"}");
    let timed = value(&before, "cohort_apply_duration_seconds_count");
    let (code, body) = support::http_with_body(
        api,
        "PUT",
        "/v1/topology",
        "cluster: test\nreplicasets: {}\n",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    let edited = cluster.text.replace("  s2:\n", "  s2:\n    weight: 2\n");
    let (code, body) =
        support::http_with_body(api, "PUT", "/v1/topology", &edited, Duration::from_secs(30))
            .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_scrape(&cluster, 1, "one rejected and one committed apply", |v| {
        value(v, "cohort_applies_total{result=\"rejected\"}") == rejected + 1.0
            && value(v, "cohort_applies_total{result=\"committed\"}") == committed + 1.0
            && value(v, "cohort_config_version") == 2.0
            && value(v, "cohort_apply_duration_seconds_count") == timed + 1.0
    });

    // SIGKILL n3: the others count it suspect, then dead.
    cluster.nodes[2].kill(Duration::from_secs(10));
    for i in 0..2 {
        wait_scrape(&cluster, i, "n3 dead after a suspicion", |v| {
            value(v, "cohort_members{status=\"dead\"}") == 1.0
                && value(v, "cohort_members{status=\"alive\"}") == 2.0
                && value(v, "cohort_gossip_suspicions_total") >= 1.0
                && value(v, "cohort_member_status_changes_total{to=\"dead\"}") >= 1.0
        });
    }
    let (_, text) = scrape(cluster.nodes[0].api(), None).unwrap();
    promtool_check(&text);

    for agent in &mut cluster.nodes[..2] {
        agent.stop(Duration::from_secs(10));
    }
    eprintln!("metrics test took {:?}", started.elapsed());
}

/// The Grafana dashboard's queries.
fn dashboard_queries() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/cohort.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    queries.push(expr.to_string());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    queries
}

/// Every `cohort_…` metric the dashboard's queries name (counters by their
/// `_total` sample name, as the Prometheus text format names the family).
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for query in dashboard_queries() {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("cohort_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

/// Every query of the dashboard is valid PromQL (`promtool check rules`
/// on them as recording rules, Grafana's variables filled in).
#[test]
fn the_grafana_dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    assert!(dashboard_metrics().len() >= 20);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let expr = query
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$cluster", "test");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required() => {
            eprintln!("SKIPPED promtool check rules: promtool is not installed (Debian: apt-get install prometheus)")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}
