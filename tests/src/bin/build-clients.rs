//! Builds the Go and Java clients under tests/go and tests/java (see `suite_tests::clients`):
//! `cargo xtask test` runs it before the tests, so the parallel tests find them up to date.
#![allow(clippy::print_stdout)] // A command-line tool talks on stdout.

use std::time::Instant;

fn main() {
    for name in suite_tests::clients::GO_PROGRAMS {
        let start = Instant::now();
        let path = suite_tests::clients::go_program(name);
        println!(
            "{} ({:.1} s)",
            path.display(),
            start.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    suite_tests::clients::java_spiffe_client();
    println!(
        "{} ({:.1} s)",
        suite_tests::clients::java_jar().display(),
        start.elapsed().as_secs_f64()
    );
}
