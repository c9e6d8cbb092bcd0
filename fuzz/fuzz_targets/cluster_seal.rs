#![no_main]

#[path = "../checks/cluster_seal.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
