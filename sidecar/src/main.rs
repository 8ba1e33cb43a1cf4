#![deny(unsafe_code)]

mod math_symbols;

fn main() -> std::process::ExitCode {
    tandem::cli::main()
}
