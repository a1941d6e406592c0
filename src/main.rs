//! The `s3mount` binary. A fake mount (`mount -f`) does nothing; a
//! `mount -o remount,ro|rw` from mount(8) goes straight to
//! [`s3mount::sysmount::remount`]; every other command line is rewritten from the fstab
//! form ([`s3mount::mount_options`]), parsed by clap and handed to
//! [`s3mount::daemon::mount`]. Invariant: the process stays single-threaded until then,
//! since `daemon::mount` may fork.

use std::process::ExitCode;

use clap::Parser;
use s3mount::cli::{Cli, Command};
use s3mount::mount_options::{expand_args, fake_mount_request, remount_request};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if fake_mount_request(&args) {
        // `mount -f`: mount(8) only records the entry; nothing is mounted.
        return ExitCode::SUCCESS;
    }
    if let Some((dir, read_only)) = remount_request(&args) {
        return match s3mount::sysmount::remount(&dir, read_only) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3mount: cannot remount {}: {e}", dir.display());
                ExitCode::from(32)
            }
        };
    }
    let args = match expand_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("s3mount: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Mount(args) => match args.into_config() {
            Ok(config) => s3mount::daemon::mount(config),
            Err(e) => {
                eprintln!("s3mount: {e}");
                ExitCode::from(2)
            }
        },
        Command::Migrate(args) => match args.into_job() {
            Ok((s3, job, log_level)) => s3mount::migrate::run(s3, job, log_level.as_deref()),
            Err(e) => {
                eprintln!("s3mount migrate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check(args) => match args.into_config() {
            Ok(config) => s3mount::check::main(&config),
            Err(e) => {
                eprintln!("s3mount: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status(args) => s3mount::status::run(&args.mountpoint, args.json),
    }
}
