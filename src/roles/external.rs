//! External roles: a role written in any language, as an executable the
//! topology names (`roles.NAME.exec`). It is called as `EXEC validate`,
//! `EXEC apply`, `EXEC stop` or `EXEC cluster-state up|assembling`, with the
//! role's section as YAML on stdin and the node's context in `COHORT_*`
//! environment variables, under a deadline.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::config::{HumanDuration, Topology};
use crate::storage::describe;

use super::section::section_yaml;
use super::{BoxFuture, ClusterState, Role, RoleContext, RoleResult};

/// How long one call may take when the topology sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a call's stdout or stderr that is kept (the rest is read
/// and dropped, so the executable never blocks on a full pipe).
const MAX_CAPTURE: usize = 64 * 1024;

/// How long the output pipes may stay open after the executable exited (a
/// background child it left may hold them).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// A role run by an executable. `validate` must change nothing; a non-zero
/// exit refuses the change, with its stderr as the reason. `apply` runs
/// when the role's section, the node's replica set or its master state
/// changed since the last successful `apply` (and again after a failed
/// one); `stop` runs when the role leaves the node, with the section last
/// applied. `cluster-state STATE` runs when the cluster becomes up (or
/// assembling) and the executable has not yet seen that state in
/// `COHORT_CLUSTER_STATE` of an earlier call.
#[derive(Debug, Default)]
pub struct ExternalRole {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What `apply` was last called with: `stop` and master changes use it.
    last: Option<Call>,
    /// What the last successful `apply` saw.
    applied: Option<Seen>,
    /// The cluster state the executable last heard of (in the environment
    /// of an `apply`, or from a `cluster-state` call).
    heard: Option<ClusterState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    exec: PathBuf,
    input: String,
    timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    call: Call,
    replicaset: String,
    is_master: bool,
}

impl ExternalRole {
    pub fn new() -> ExternalRole {
        ExternalRole::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn apply_with(&self, ctx: &RoleContext, call: Call) -> RoleResult {
        let seen = Seen {
            call: call.clone(),
            replicaset: ctx.replicaset.clone(),
            is_master: ctx.is_master(),
        };
        if self.state().applied.as_ref() == Some(&seen) {
            return Ok(());
        }
        let result = run(&call, "apply", ctx).await;
        let mut state = self.state();
        state.heard = Some(ctx.cluster_state());
        state.last = Some(call);
        state.applied = result.is_ok().then_some(seen);
        result
    }
}

/// The call `topology` asks of the role in `ctx`.
fn call_for(ctx: &RoleContext, topology: &Topology) -> Result<Call, String> {
    let spec = ctx
        .section(topology)
        .ok_or_else(|| format!("the topology has no `roles.{}` section", ctx.role))?;
    let exec = spec
        .exec
        .as_ref()
        .ok_or_else(|| format!("`roles.{}` has no `exec`", ctx.role))?;
    Ok(Call {
        exec: exec.value.clone(),
        input: section_yaml(spec)?,
        timeout: spec.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |t| t.value.0),
    })
}

impl Role for ExternalRole {
    fn validate_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        _old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            let call = call_for(ctx, new)?;
            run(&call, "validate", ctx).await
        })
    }

    fn apply_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        _old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            let call = call_for(ctx, new)?;
            self.apply_with(ctx, call).await
        })
    }

    fn master_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            let last = self.state().last.clone();
            match last {
                Some(call) => self.apply_with(ctx, call).await,
                None => Ok(()),
            }
        })
    }

    fn cluster_state_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            let cluster = ctx.cluster_state();
            let last = {
                let state = self.state();
                match state.heard == Some(cluster) {
                    true => None,
                    false => state.last.clone(),
                }
            };
            let Some(call) = last else {
                return Ok(());
            };
            let result = run_with(&call, "cluster-state", Some(cluster.as_str()), ctx).await;
            if result.is_ok() {
                self.state().heard = Some(cluster);
            }
            result
        })
    }

    fn stop<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            let last = {
                let mut state = self.state();
                state.applied = None;
                state.heard = None;
                state.last.take()
            };
            match last {
                Some(call) => run(&call, "stop", ctx).await,
                None => Ok(()),
            }
        })
    }
}

/// Runs `EXEC ACTION` once: the section on stdin, the context in the
/// environment. Ok on exit status 0; else the trimmed stderr, or the exit
/// status when stderr is empty. Past the deadline the executable's whole
/// process group is killed.
async fn run(call: &Call, action: &str, ctx: &RoleContext) -> RoleResult {
    run_with(call, action, None, ctx).await
}

/// `run`, with one more argument after the action.
async fn run_with(
    call: &Call,
    action: &str,
    argument: Option<&str>,
    ctx: &RoleContext,
) -> RoleResult {
    let exec = call.exec.display();
    let mut command = tokio::process::Command::new(&call.exec);
    // The role's `COHORT_*` are the agent's word alone: none inherited
    // from the agent's own environment (an operator's `COHORT_API`, a
    // test harness's settings) can pass for one.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COHORT_") {
            command.env_remove(name);
        }
    }
    command.arg(action);
    if let Some(argument) = argument {
        command.arg(argument);
    }
    command
        .env("COHORT_NODE", &ctx.node)
        .env("COHORT_UUID", ctx.uuid.to_string())
        .env("COHORT_REPLICASET", &ctx.replicaset)
        .env("COHORT_ROLE", &ctx.role)
        .env(
            "COHORT_IS_MASTER",
            if ctx.is_master() { "true" } else { "false" },
        )
        .env("COHORT_ACTION", action)
        .env("COHORT_CLUSTER_STATE", ctx.cluster_state().as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a deadline kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(version) = ctx.version {
        command.env("COHORT_CONFIG_VERSION", version.to_string());
    }
    debug!(role = %ctx.role, %action, exec = %exec, "running external role");
    let mut child = spawn(&mut command)
        .await
        .map_err(|e| format!("cannot run {exec}: {}", describe(&e)))?;
    let mut group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));

    let writer = child.stdin.take().map(|mut stdin| {
        let input = call.input.clone();
        // An executable that does not read stdin closes the pipe: fine.
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        })
    });
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());

    let waited = tokio::time::timeout(call.timeout, child.wait()).await;
    if let Some(writer) = writer {
        writer.abort();
    }
    let status = match waited {
        Ok(Ok(status)) => {
            group.disarm();
            status
        }
        Ok(Err(e)) => {
            group.kill();
            let _ = child.kill().await;
            return Err(format!(
                "{exec} {action}: waiting for it failed: {}",
                describe(&e)
            ));
        }
        Err(_) => {
            group.kill();
            let _ = child.kill().await;
            stdout.abort();
            stderr.abort();
            return Err(format!(
                "{exec} {action} timed out after {} (killed)",
                HumanDuration(call.timeout)
            ));
        }
    };
    let out = stdout.finish().await;
    let err = stderr.finish().await;
    let out = out.trim();
    let err = err.trim();
    if !out.is_empty() {
        debug!(role = %ctx.role, %action, "stdout: {out}");
    }
    if status.success() {
        if !err.is_empty() {
            info!(role = %ctx.role, %action, "stderr: {err}");
        }
        return Ok(());
    }
    if !err.is_empty() {
        return Err(err.to_string());
    }
    Err(match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("{status}"),
    })
}

/// Spawns, retrying briefly while the file is busy: an executable just
/// written (by a deploy, or a test) can be held open for writing for a
/// moment by a child another thread is forking (ETXTBSY).
async fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = nix::errno::Errno::ETXTBSY as i32;
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Kills the executable's process group unless disarmed (after it exited
/// by itself: what it left running in the background is its business).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end into a bounded buffer.
struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    task: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(pipe: Option<impl AsyncRead + Unpin + Send + 'static>) -> Capture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                    let mut kept = buffer.lock().unwrap_or_else(|p| p.into_inner());
                    let room = MAX_CAPTURE.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            })
        });
        Capture { buffer, task }
    }

    fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// What was read, once the pipe closed or `PIPE_GRACE` passed.
    async fn finish(mut self) -> String {
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(PIPE_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        let bytes = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.abort();
    }
}
