#![no_main]

#[path = "../checks/proxy_header.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
