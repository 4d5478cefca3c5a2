//! `meerkat rules check` and `meerkat rules test`: rule files checked and unit-tested as
//! `promtool check rules` and `promtool test rules` do, with their output shape, so scripts
//! and CI jobs written for promtool keep working.

use std::path::PathBuf;
use std::process::ExitCode;

/// Checks every file (all of them, not stopping at the first failure); success only when
/// all pass. Reports go to stdout, errors to stderr, as promtool's.
pub fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        println!("Checking {}", file.display());
        match alerting::rulefmt::check_file(file) {
            Ok(report) => {
                if report.duplicates.is_empty() {
                    println!("  SUCCESS: {} rules found", report.rules);
                } else {
                    // promtool 2.42 reports duplicates as a lint failure that is not fatal
                    // (no --lint-fatal): on stderr, and the exit code stays 0.
                    eprintln!("  FAILED:");
                    eprintln!(
                        "lint error {} duplicate rule(s) found.",
                        report.duplicates.len()
                    );
                    for duplicate in &report.duplicates {
                        eprintln!("Metric: {}\nLabel(s):", duplicate.name);
                        for (name, value) in &duplicate.labels {
                            eprintln!("\t{name}: {value}");
                        }
                    }
                    eprintln!("Might cause inconsistency while recording expressions");
                }
            }
            Err(errors) => {
                failed = true;
                eprintln!("  FAILED:");
                for error in errors {
                    eprintln!("{error}");
                }
            }
        }
        println!();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every test file (all of them); success only when all pass. As promtool's: the
/// verdict per file on stdout, the failures on stderr.
pub fn test(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = false;
    for file in files {
        println!("Unit Testing:  {}", file.display());
        match runtime.block_on(alerting::unittest::run_file(file)) {
            Ok(()) => println!("  SUCCESS"),
            Err(errors) => {
                failed = true;
                eprintln!("  FAILED:");
                for error in errors {
                    eprintln!("{error}");
                    println!();
                }
            }
        }
        println!();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
