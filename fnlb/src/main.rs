//! The fnlb binary: parse the command line, then run the balancer.
fn main() {
    let cfg = match fnlb::config::parse_args(std::env::args_os().collect()) {
        Ok(cfg) => cfg,
        Err(exit) => {
            if exit.stdout {
                println!("{}", exit.message);
            } else {
                eprintln!("{}", exit.message);
            }
            std::process::exit(exit.code);
        }
    };
    std::process::exit(fnlb::app::main(cfg));
}
