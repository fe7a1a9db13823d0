//! The `spillway` binary: composes the library's command line and nothing else.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(spillway::cli::run())
}
