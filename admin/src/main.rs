//! The `ringway` binary.

fn main() -> std::process::ExitCode {
    ringway_admin::main()
}
