//! `portcullis`: see `portcullis --help`.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    portcullis::cli::run(cli)
}
