fn main() {
    eprintln!("loadgen: the load harness lands with its own issue; nothing to run yet");
    std::process::exit(2);
}
