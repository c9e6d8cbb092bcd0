#![no_main]

#[path = "../checks/response_head.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
