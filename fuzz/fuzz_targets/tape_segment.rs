#![no_main]

#[path = "../checks/tape_segment.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
