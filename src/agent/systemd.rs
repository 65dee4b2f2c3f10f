//! What the agent tells systemd (`Type=notify` / `notify-reload`): ready
//! once it listens, reloading and ready again around SIGHUP, stopping at
//! the end. Outside systemd (no NOTIFY_SOCKET) every call does nothing.

use sd_notify::NotifyState;

/// The node listens and serves; `status` is the line `systemctl status` shows.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload began. systemd 253+ fails a `notify-reload` service whose
/// RELOADING=1 comes without the monotonic time, so it is always sent.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The reload is over (whether or not the new file was taken).
pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(states: &[NotifyState<'_>]) {
    // Nothing useful can be done when systemd cannot be told; the agent
    // runs on either way.
    let _ = sd_notify::notify(states);
}
