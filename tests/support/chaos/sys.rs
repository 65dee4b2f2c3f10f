//! The few system calls the chaos harness needs that std does not wrap
//! (the crate's nix is built without its `sched` and `ioctl` parts, and a
//! test harness is no reason to add them): entering a network namespace
//! from one thread, opening a TAP device, polling two descriptors.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

const CLONE_NEWNET: i32 = 0x4000_0000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: u64 = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const POLLIN: i16 = 0x0001;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    // The rest of the kernel's union (struct ifreq is 40 bytes).
    _pad: [u8; 22],
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

/// Moves the calling thread (only it) into the network namespace `name`
/// (`ip netns add NAME`): sockets and devices it creates from now on live
/// there.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let ns = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on a descriptor we own; it changes this thread's
    // namespace only.
    if unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `work` on a thread of its own inside namespace `name`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter_netns(&name)?;
        work()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A TAP device `name` made in namespace `ns`, frames without a packet
/// information header. The device lives as long as the returned file.
pub fn tap(ns: &str, name: &str) -> io::Result<File> {
    let name = name.to_string();
    in_netns(ns, move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.len() >= req.name.len() {
            return Err(io::Error::other(format!("interface name {name} too long")));
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes one struct ifreq, which
        // `req` is (same size and layout for the fields it uses).
        if unsafe { ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    })
}

/// Waits until `a` or `b` has something to read, at most `timeout`:
/// which of them do.
pub fn readable(a: &File, b: &File, timeout: Duration) -> io::Result<(bool, bool)> {
    let mut fds = [
        PollFd {
            fd: a.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        },
        PollFd {
            fd: b.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: two valid pollfd structs for the length given.
    let n = unsafe { poll(fds.as_mut_ptr(), 2, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// Whether this process runs as root (the suite creates namespaces,
/// devices and mounts).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}
