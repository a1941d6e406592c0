use std::process::ExitCode;

use clap::Parser;
use s3mount::cli::{Cli, Command, expand_args};

fn main() -> ExitCode {
    let args = match expand_args(std::env::args_os().collect()) {
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
    }
}
