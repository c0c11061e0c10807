//! `act-studio`: a subcommand runs the CLI.

fn main() -> std::process::ExitCode {
    act_studio::cli::main()
}
