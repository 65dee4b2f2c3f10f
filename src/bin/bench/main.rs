//! Benchmarks against real nodes on loopback. Prints JSON (and a short
//! summary on stderr); never asserts a figure.
//!
//!   cargo build --release
//!   target/release/bench membership --nodes 100
//!   bench/peers/memberlist/build.sh
//!   target/release/bench memberlist-peer --nodes 100
//!   target/release/bench apply --nodes 100 --runs 5 --in-a-row 100
//!   target/release/bench parse --nodes 500
//!   target/release/bench raft --nodes 50 --voters 5 --kills 20
//!   target/release/bench ui --agents 100
//!   target/release/bench compare --nodes 100 --loss 5 --seed 1 --chart-dir docs/benchmarks
//!   target/release/bench chart --chart-dir docs/benchmarks reports/*.json
//!
//! `membership`: N `cohort agent` processes (see `cohort.rs`).
//! `memberlist-peer`: N hashicorp/memberlist processes with its LAN
//! defaults, measured the same way where the two can be (see
//! `memberlist.rs`), for the comparison issue 4 asks for.
//! `apply`: N agents sharing one topology; times topology applies (two-phase
//! commit) sent to their API, one at a time and back to back (see
//! `apply.rs`), for issue 5.
//! `raft`: N agents in failover mode `raft`; times leader failover and
//! master failover (SIGKILL → every live node shows the new one), for
//! issue 6 (see `raft.rs`).
//! `compare`: `membership` then `memberlist-peer` in the same conditions
//! (N, seed, loss, delay, windows), both printed with the ratios
//! cohort/memberlist, for issue 10 (see `compare.rs`); `chart` draws SVG
//! charts from saved reports (see `chart.rs`).
//!
//! Every node the bench starts is killed on every exit path: by its
//! owner's `Drop` (result, error, panic), by a signal thread on SIGINT,
//! SIGTERM or SIGHUP, and by the kernel (parent-death signal) when the
//! bench itself is SIGKILLed.

mod apply;
mod chart;
mod chromium;
mod cohort;
mod common;
mod compare;
mod memberlist;
mod raft;
mod ui;

use clap::Parser;

#[derive(Parser)]
#[command(about = "cohort benchmarks on real nodes on loopback; prints JSON")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// SWIM: convergence, failure detection, false positives, traffic, footprint.
    Membership(cohort::MembershipArgs),
    /// The same on hashicorp/memberlist (LAN defaults), for comparison.
    MemberlistPeer(memberlist::MemberlistArgs),
    /// Topology apply (two-phase commit): wall time, phases, time to every node.
    Apply(apply::ApplyArgs),
    /// Topology parsing: the CPU each node spends parsing the apply model's text.
    Parse(apply::ParseArgs),
    /// Raft: leader failover and master failover after SIGKILL, seen by every node.
    Raft(raft::RaftArgs),
    /// The web page: load time with N agents, bytes on load and while quiet, a death shown live.
    Ui(ui::UiArgs),
    /// cohort then memberlist, same N, seed, loss and windows; both and the ratios.
    Compare(compare::CompareArgs),
    /// SVG charts (detection CDF, figures against N) from saved reports.
    Chart(chart::ChartArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = common::scratch_dir();
    common::stop_on_signal(scratch.clone())?;
    common::raise_open_files_limit()?;
    match args.scenario {
        Scenario::Membership(args) => cohort::membership(args, &scratch),
        Scenario::MemberlistPeer(args) => memberlist::memberlist_peer(args, &scratch),
        Scenario::Apply(args) => apply::apply(args, &scratch),
        Scenario::Parse(args) => apply::parse(&args),
        Scenario::Raft(args) => raft::raft(args, &scratch),
        Scenario::Ui(args) => ui::ui(args, &scratch),
        Scenario::Compare(args) => compare::compare(args, &scratch),
        Scenario::Chart(args) => chart::chart(args),
    }
}
