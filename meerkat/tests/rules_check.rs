//! `meerkat rules check` gives promtool 2.42's verdict on Prometheus's own rule files
//! (`../shared/peer-tests/prometheus-2.42-promtool/`, read in place), and says where a
//! broken file is broken. With promtool installed, its verdicts are checked live as well.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/peer-tests/prometheus-2.42-promtool"
);

/// promtool's exit code per file: the `promtool check rules` row of the peer-tests README.
const VERDICTS: &[(&str, i32)] = &[
    ("rules.yml", 0),
    ("rules_duplicates.yml", 0),
    ("bad-rules-error.yml", 0),
    ("at-modifier.yml", 0),
    ("negative-offset.yml", 0),
    ("rulefmt/test.yaml", 0),
    ("bad-promql.yml", 1),
    ("bad-rules-syntax.yml", 1),
    ("rulefmt/bad_annotation.bad.yaml", 1),
    ("rulefmt/bad_expr.bad.yaml", 1),
    ("rulefmt/bad_field.bad.yaml", 1),
    ("rulefmt/bad_lname.bad.yaml", 1),
    ("rulefmt/duplicate_grp.bad.yaml", 1),
    ("rulefmt/invalid_label_name.bad.yaml", 1),
    ("rulefmt/invalid_record_name.bad.yaml", 1),
    ("rulefmt/no_rec_alert.bad.yaml", 1),
    ("rulefmt/noexpr.bad.yaml", 1),
    ("rulefmt/record_and_alert.bad.yaml", 1),
    ("rulefmt/record_and_for.bad.yaml", 1),
    ("rulefmt/record_and_keep_firing_for.bad.yaml", 1),
];

fn path(file: &str) -> PathBuf {
    Path::new(PEER).join(file)
}

fn meerkat_check(files: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meerkat"))
        .args(["rules", "check"])
        .args(files)
        .output()
        .expect("run meerkat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_peer_file_gets_promtools_verdict() {
    for (file, expected) in VERDICTS {
        let output = meerkat_check(&[path(file)]);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert_eq!(
            output.status.code(),
            Some(*expected),
            "{file}: expected exit {expected}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.starts_with(&format!("Checking {}\n", path(file).display())),
            "{stdout}"
        );
        if *expected == 0 && !stderr.contains("duplicate rule(s) found") {
            assert!(stdout.contains("  SUCCESS: "), "{file}: {stdout}");
        }
        if *expected == 1 {
            assert!(stderr.starts_with("  FAILED:\n"), "{file}: {stderr}");
        }
    }
}

#[test]
fn the_table_covers_every_rulefmt_bad_file() {
    let listed = std::fs::read_dir(path("rulefmt")).expect("read the rulefmt directory");
    let mut count = 0;
    for entry in listed {
        let name = entry.expect("directory entry").file_name();
        let name = format!("rulefmt/{}", name.to_string_lossy());
        if name.ends_with(".bad.yaml") {
            count += 1;
            assert!(
                VERDICTS.contains(&(name.as_str(), 1)),
                "{name} is not in the table as failing"
            );
        }
    }
    assert_eq!(count, 12, "the peer suite has 12 rulefmt/*.bad.yaml files");
}

#[test]
fn broken_files_are_named_with_line_and_reason() {
    let cases = [
        (
            "bad-rules-syntax.yml",
            "7:15: ",
            "could not parse expression",
        ),
        (
            "rulefmt/bad_field.bad.yaml",
            "8:9: ",
            "unknown field `annotation`",
        ),
        (
            "rulefmt/bad_expr.bad.yaml",
            "5:15: ",
            "could not parse expression",
        ),
        (
            "rulefmt/duplicate_grp.bad.yaml",
            "3:11: ",
            "\"yolo\" is repeated",
        ),
        (
            "rulefmt/noexpr.bad.yaml",
            "4:9: ",
            "field 'expr' must be set",
        ),
        (
            "rulefmt/bad_lname.bad.yaml",
            "4:9: ",
            "invalid label name: ins-tance",
        ),
    ];
    for (file, line, reason) in cases {
        let output = meerkat_check(&[path(file)]);
        let stderr = text(&output.stderr);
        let expected = format!("{}: {line}", path(file).display());
        assert!(
            stderr.contains(&expected),
            "{file}: {stderr} lacks {expected:?}"
        );
        assert!(stderr.contains(reason), "{file}: {stderr} lacks {reason:?}");
    }
}

#[test]
fn one_failing_file_fails_the_run_and_all_are_checked() {
    let output = meerkat_check(&[
        path("rules.yml"),
        path("bad-promql.yml"),
        path("at-modifier.yml"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("  SUCCESS: 5 rules found"), "{stdout}");
    assert!(
        stdout.contains(&format!("Checking {}", path("at-modifier.yml").display())),
        "{stdout}"
    );
    assert!(stdout.contains("  SUCCESS: 1 rules found"), "{stdout}");
}

#[test]
fn duplicates_warn_as_promtool_does() {
    let output = meerkat_check(&[path("rules_duplicates.yml")]);
    assert_eq!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("lint error 1 duplicate rule(s) found."),
        "{stderr}"
    );
    assert!(
        stderr.contains("Metric: job:test:count_over_time1m"),
        "{stderr}"
    );
}

/// The same verdicts from promtool itself, when it is installed (Debian's prometheus
/// package; `scripts/install-peers`).
#[test]
fn promtool_agrees_when_installed() {
    let installed = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("promtool is not installed: the README's verdicts were checked only");
        return;
    }
    for (file, expected) in VERDICTS {
        let promtool = Command::new("promtool")
            .args(["check", "rules"])
            .arg(path(file))
            .output()
            .expect("run promtool");
        assert_eq!(
            promtool.status.code(),
            Some(*expected),
            "promtool on {file}: {}",
            text(&promtool.stderr)
        );
        let meerkat = meerkat_check(&[path(file)]);
        assert_eq!(meerkat.status.code(), promtool.status.code(), "{file}");
    }
}
