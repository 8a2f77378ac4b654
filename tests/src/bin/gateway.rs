//! The gateway under test: exactly what the `ringway` binary runs.

fn main() -> std::process::ExitCode {
    ringway_admin::main()
}
