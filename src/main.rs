use clap::Parser;

fn main() -> std::process::ExitCode {
    cohort::cli::run(cohort::cli::Cli::parse())
}
