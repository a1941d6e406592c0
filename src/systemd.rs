//! The systemd notify protocol of a `Type=notify` unit, through the `sd-notify` crate:
//! READY=1 once the mount answers, STOPPING=1 when a stop begins, and while pending
//! uploads drain, a STATUS= line and an EXTEND_TIMEOUT_USEC= every
//! [`DRAIN_REPORT_EVERY`], so that systemd does not kill a daemon that is still
//! uploading. Invariant: without NOTIFY_SOCKET nothing is sent; a failure to send is
//! logged, never fatal.

use std::convert::Infallible;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use sd_notify::NotifyState;

/// How often a drain reports its progress (and extends systemd's stop timeout).
pub const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How far each report pushes systemd's stop timeout: several reports' worth, so that
/// one late report does not get the daemon killed.
const DRAIN_EXTENSION: Duration = Duration::from_secs(30);

/// Sends `states` to systemd when run as a `Type=notify` service (NOTIFY_SOCKET set).
pub fn notify(states: &[NotifyState]) {
    let result = match std::env::var_os("NOTIFY_SOCKET") {
        // sd-notify takes the variable as a file system path; systemd also allows the
        // name of an abstract socket, written "@name".
        Some(path) if path.as_bytes().starts_with(b"@") => {
            notify_abstract(&path.as_bytes()[1..], states)
        }
        _ => sd_notify::notify(states),
    };
    if let Err(e) = result {
        log::warn!("could not notify systemd: {e}");
    }
}

fn notify_abstract(name: &[u8], states: &[NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = SocketAddr::from_abstract_name(name)?;
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

/// The text of a drain's progress: `draining 3 uploads, 12 MiB`.
pub fn drain_status(files: usize, bytes: u64) -> String {
    let mib = bytes.div_ceil(1 << 20);
    let plural = if files == 1 { "" } else { "s" };
    format!("draining {files} upload{plural}, {mib} MiB")
}

/// Reports a drain's progress to systemd and the log every [`DRAIN_REPORT_EVERY`],
/// starting at once, for as long as it is polled; `pending` says how many files and
/// bytes S3 does not have yet.
pub async fn report_drain(pending: impl Fn() -> (usize, u64)) -> Infallible {
    loop {
        let (files, bytes) = pending();
        if files > 0 {
            let status = drain_status(files, bytes);
            log::info!("{status}");
            notify(&[
                NotifyState::Status(&status),
                NotifyState::ExtendTimeoutUsec(DRAIN_EXTENSION.as_micros() as u32),
            ]);
        }
        tokio::time::sleep(DRAIN_REPORT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::drain_status;

    #[test]
    fn status_lines_count_files_and_round_bytes_up() {
        assert_eq!(drain_status(3, 12 << 20), "draining 3 uploads, 12 MiB");
        assert_eq!(drain_status(1, 1), "draining 1 upload, 1 MiB");
        assert_eq!(drain_status(2, 0), "draining 2 uploads, 0 MiB");
    }
}
