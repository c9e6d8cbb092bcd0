#![no_main]

#[path = "../checks/stdio_lines.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
