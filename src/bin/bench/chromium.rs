//! Headless Chromium driven over the DevTools protocol, for the web
//! page's bench (`ui.rs`) and browser test (`tests/web_ui.rs` includes this
//! file). The protocol runs on a pipe (`--remote-debugging-pipe`: commands
//! on the browser's fd 3, answers and events on its fd 4, one JSON message
//! per NUL byte), so there is no websocket to speak and no port to find.
//!
//! The browser runs in a process group of its own, dies with its parent
//! (parent-death signal), and the whole group is SIGKILLed when the
//! `Browser` is dropped.
// Shared by two crates (the bench and a test): each uses part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser to run: `COHORT_CHROMIUM`, else the first of `chromium`
/// (Debian's package), `chromium-browser` and `google-chrome` on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COHORT_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless browser with one page attached.
pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session (flat mode: commands carry it).
    session: String,
    /// Events received and not yet taken, in order.
    events: Vec<Value>,
}

impl Browser {
    /// Starts `program` headless with its profile in `profile` (created)
    /// and its stderr in `log`, then attaches to its page. `spawn` starts
    /// the command (a bench registers the process for its clean-up).
    pub fn launch(
        program: &Path,
        profile: &Path,
        log: &Path,
        spawn: impl FnOnce(&mut Command) -> io::Result<Child>,
    ) -> anyhow::Result<Browser> {
        std::fs::create_dir_all(profile)?;
        let (commands_read, commands_write) = pipe()?;
        let (answers_read, answers_write) = pipe()?;
        let mut command = Command::new(program);
        command
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?);
        // Chromium's sandbox refuses to run as root.
        if nix::unistd::geteuid().is_root() {
            command.arg("--no-sandbox");
        }
        command.arg("about:blank");
        let (read_fd, write_fd) = (commands_read.as_raw_fd(), answers_write.as_raw_fd());
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe system calls (fcntl, dup2, setpgid, prctl) and
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                use nix::libc;
                // Above 4 first, so that moving one onto 3 or 4 cannot
                // close the other.
                let read_high = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 10);
                let write_high = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 10);
                if read_high < 0
                    || write_high < 0
                    || libc::dup2(read_high, 3) < 0
                    || libc::dup2(write_high, 4) < 0
                    || libc::setpgid(0, 0) < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child =
            spawn(&mut command).with_context(|| format!("cannot start {}", program.display()))?;
        // Only the browser holds these ends now: its exit ends the reader.
        drop((commands_read, answers_write));
        let (tx, from_browser) = mpsc::channel();
        let reader = File::from(answers_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            loop {
                message.clear();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: File::from(commands_write),
            from_browser,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
        };
        browser.attach().with_context(|| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            // This file is shared with tests/web_ui.rs: no `common`.
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "the browser's DevTools pipe; the end of its log:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        })?;
        Ok(browser)
    }

    /// Attaches to the page the browser opened (or a new one).
    fn attach(&mut self) -> anyhow::Result<()> {
        let targets = self.send(None, "Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|list| list.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_string);
        let target = match page {
            Some(id) => id,
            None => self.send(None, "Target.createTarget", json!({"url": "about:blank"}))?
                ["targetId"]
                .as_str()
                .ok_or_else(|| anyhow!("Target.createTarget gave no targetId"))?
                .to_string(),
        };
        let attached = self.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )?;
        self.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("Target.attachToTarget gave no sessionId"))?
            .to_string();
        Ok(())
    }

    /// The browser's process id (also its process group's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A command to the page; its result.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .with_context(|| format!("sending {method} to the browser"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.from_browser.recv_timeout(left) {
                Ok(message) => message,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{method}: no answer within {CALL_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{method}: the browser closed its DevTools pipe")
                }
            };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(message["result"].clone());
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Every event received so far (network, console, ...), taken.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.extend(self.from_browser.try_iter());
        std::mem::take(&mut self.events)
    }

    /// Loads `url` in the page.
    pub fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let answer = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("cannot load {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value as JSON.
    pub fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let answer = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("an exception");
            bail!("{expression}: {text}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Evaluates `expression` until it gives something other than null or
    /// false, for at most `timeout`: that value, or the last one seen.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<Value, Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            match self.evaluate(expression) {
                Ok(Value::Null) | Ok(Value::Bool(false)) => {}
                Ok(value) => return Ok(value),
                Err(e) => last = json!(e.to_string()),
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page as it is on screen now.
    pub fn screenshot(&mut self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let answer = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = answer["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Page.captureScreenshot gave no data"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group: the browser and its renderer, GPU and zygote processes.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipe whose ends are closed on exec (the browser gets its copies
/// through `dup2`).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}
