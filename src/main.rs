//! The `panda` command: parses the arguments and hands them to [`cli::run`], which loads
//! the configuration, sets up tracing and signals and runs the subcommand; every error
//! comes back as one line on stderr and one sysexits-style exit code (`cli::exit`).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("panda: {}", e.message());
        std::process::exit(e.code);
    }
}
