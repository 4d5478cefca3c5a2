//! `meerkat rules test` gives promtool 2.42's verdict on Prometheus's own rule unit tests
//! (`../shared/peer-tests/prometheus-2.42-promtool/`, read in place; test files name their
//! rule files relative to themselves). With promtool installed, its verdicts are checked
//! live as well, and rule unit tests written here (templates, `for`, `keep_firing_for`,
//! recording rules feeding alerts) must pass in both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/peer-tests/prometheus-2.42-promtool"
);

/// promtool's exit code per file: the `promtool test rules` row of the peer-tests README.
const VERDICTS: &[(&str, i32)] = &[
    ("at-modifier-test.yml", 0),
    ("negative-offset-test.yml", 0),
    ("unittest.yml", 0),
    ("long-period.yml", 0),
    ("bad-rules-error-test.yml", 1),
    ("bad-rules-syntax-test.yml", 1),
    ("failing.yml", 1),
    ("bad-input-series.yml", 1),
];

fn meerkat_test(files: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meerkat"))
        .args(["rules", "test"])
        .args(files)
        .output()
        .expect("run meerkat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_peer_test_file_gets_promtools_verdict() {
    for (file, expected) in VERDICTS {
        let path = Path::new(PEER).join(file);
        let output = meerkat_test(std::slice::from_ref(&path));
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert_eq!(
            output.status.code(),
            Some(*expected),
            "{file}: expected exit {expected}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.starts_with(&format!("Unit Testing:  {}\n", path.display())),
            "{stdout}"
        );
        if *expected == 0 {
            assert!(stdout.contains("  SUCCESS\n"), "{file}: {stdout}");
        } else {
            assert!(stderr.starts_with("  FAILED:\n"), "{file}: {stderr}");
        }
    }
}

#[test]
fn failures_say_what_differed() {
    let output = meerkat_test(&[Path::new(PEER).join("failing.yml")]);
    let stderr = text(&output.stderr);
    // The first group expects `test` to be 1 (it is 0) and an alert that never fires.
    assert!(stderr.contains("expr: \"test\", time: 0s"), "{stderr}");
    assert!(stderr.contains("alertname: Test, time: 0s"), "{stderr}");
    // The second expects no alerts where InstanceDown and AlwaysFiring fire.
    assert!(
        stderr.contains("alertname: InstanceDown, time: 5m0s"),
        "{stderr}"
    );
    // Templates of a series without `instance` expand it to nothing, as Prometheus does.
    assert!(stderr.contains("summary=\"Instance  down\""), "{stderr}");
    assert!(
        stderr.contains("    name: Failing alert test,\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exp: {__name__=\"test\"} 1E+00"),
        "{stderr}"
    );
    assert!(
        stderr.contains("alertname: AlwaysFiring, time: 5m0s"),
        "{stderr}"
    );
    let output = meerkat_test(&[Path::new(PEER).join("bad-rules-error-test.yml")]);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("rule: joined, time: 0s"), "{stderr}");
    assert!(
        stderr.contains("many-to-many") || stderr.contains("duplicate"),
        "{stderr}"
    );
}

/// Rules and tests written for this suite, exercising what the peer files leave out.
const RULES: &str = r#"
groups:
  - name: chained
    rules:
      - record: chained:one
        expr: vector(1)
      - alert: ChainedSeen
        expr: chained:one > 0
  - name: recorded
    rules:
      - record: job:errors:rate1m
        expr: sum by (job) (rate(errors_total[1m]))
  - name: alerts
    rules:
      - alert: HighErrors
        expr: job:errors:rate1m > 0.5
        for: 2m
        keep_firing_for: 3m
        labels:
          severity: '{{ if ge $value 1.0 }}page{{ else }}ticket{{ end }}'
        annotations:
          summary: '{{ $labels.job }} errors at {{ $value | humanize }}/s'
          share: '{{ $value | humanizePercentage }}'
          count: '{{ with query "count(errors_total)" }}{{ . | first | value }}{{ end }} series'
          printed: '{{ printf "%.3f" $value }} {{ $value }}'
"#;

const TESTS: &str = r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'errors_total{job="api", instance="a"}'
        values: '0+60x5 300x10'
      - series: 'errors_total{job="db", instance="b"}'
        values: '0+30x15'
    promql_expr_test:
      - expr: job:errors:rate1m
        eval_time: 3m
        exp_samples:
          - labels: 'job:errors:rate1m{job="api"}'
            value: 1
          - labels: 'job:errors:rate1m{job="db"}'
            value: 0.5
      - expr: ALERTS_FOR_STATE{alertname="HighErrors"}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS_FOR_STATE{alertname="HighErrors", job="api", severity="page"}'
            value: 60
    alert_rule_test:
      # A rule sees what an earlier rule of its group recorded at the same time.
      - eval_time: 0m
        alertname: ChainedSeen
        exp_alerts:
          - {}
      - eval_time: 2m
        alertname: HighErrors
        exp_alerts: []
      - eval_time: 3m
        alertname: HighErrors
        exp_alerts:
          - exp_labels: {job: api, severity: page}
            exp_annotations:
              summary: api errors at 1/s
              share: 100%
              count: 2 series
              printed: 1.000 1
      # api stops erroring after 5m; keep_firing_for holds it 3m more, with the
      # annotations of the last evaluation that returned it.
      - eval_time: 8m
        alertname: HighErrors
        exp_alerts:
          - exp_labels: {job: api, severity: page}
            exp_annotations:
              summary: api errors at 1/s
              share: 100%
              count: 2 series
              printed: 1.000 1
      - eval_time: 9m
        alertname: HighErrors
        exp_alerts: []
"#;

fn promtool_installed() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn rule_tests_written_here_pass_in_meerkat_and_promtool() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("rules.yml"), RULES).expect("write rules");
    let test = dir.path().join("test.yml");
    std::fs::write(&test, TESTS).expect("write tests");
    let output = meerkat_test(std::slice::from_ref(&test));
    assert_eq!(
        output.status.code(),
        Some(0),
        "meerkat:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    if promtool_installed() {
        let promtool = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&test)
            .output()
            .expect("run promtool");
        assert_eq!(
            promtool.status.code(),
            Some(0),
            "promtool:\n{}{}",
            text(&promtool.stdout),
            text(&promtool.stderr)
        );
    }
    // A wrong expectation fails in both.
    let wrong = dir.path().join("wrong.yml");
    std::fs::write(
        &wrong,
        TESTS.replace("summary: api errors at 1/s", "summary: nope"),
    )
    .unwrap();
    let output = meerkat_test(std::slice::from_ref(&wrong));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("summary=\"api errors at 1/s\""),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn promtool_agrees_when_installed() {
    if !promtool_installed() {
        eprintln!("promtool is not installed: the README's verdicts were checked only");
        return;
    }
    for (file, expected) in VERDICTS {
        let path = Path::new(PEER).join(file);
        let promtool = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&path)
            .output()
            .expect("run promtool");
        assert_eq!(
            promtool.status.code(),
            Some(*expected),
            "promtool on {file}"
        );
    }
}
