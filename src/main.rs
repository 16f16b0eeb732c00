fn main() -> std::process::ExitCode {
    devenv::main()
}
