//! `tetherctl`: runs the command line given; see the library for commands.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tetherctl::execute(std::env::args_os()).await
}
