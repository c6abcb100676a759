//! Log lines that reach the host whole.
//!
//! Spin forwards each instance's stderr to its own log as the writes come, and concurrent
//! instances interleave. `eprintln!` writes a formatted line in several pieces, so lines from
//! concurrent requests could tear into each other — and a torn `switchyard usage {json}` line
//! is a lost usage record. Every line is therefore formatted first and written with one
//! `write_all` (one host write for any line under the 4 KiB a WASI stream accepts per call).

use std::io::Write;

/// Writes `text` and a newline to stderr as one write.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 1);
    buf.push_str(text);
    buf.push('\n');
    // Nothing useful can be done when stderr itself fails.
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}
