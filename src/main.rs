//! `act-studio`: a subcommand runs the CLI.

fn main() -> std::process::ExitCode {
    // candle counts the physical cores (by reading /proc/cpuinfo) on every tensor operation
    // that may use threads, unless RAYON_NUM_THREADS is set; a decode step runs dozens of such
    // small operations (measured: ≈ 9 % of decode time). Pin it once to what rayon picks anyway.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: this is the first statement of `main`; no other thread exists yet that could
        // read the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    act_studio::cli::main()
}
