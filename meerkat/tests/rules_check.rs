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
    if !promtool_installed() {
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
/// Alert annotation templates and promtool 2.42's exit code for a rule file holding each.
const TEMPLATE_VERDICTS: &[(&str, i32)] = &[
    ("{{ $labels.instance }} of {{ $labels.job }}", 0),
    (
        "{{ .Labels.x }} {{ $externalLabels.cluster }} {{ $externalURL }}",
        0,
    ),
    (
        "{{ $value | printf \"%.2f\" }} {{ humanize $value }} {{ humanizePercentage $value }}",
        0,
    ),
    (
        "{{ if gt $value 1.0 }}high{{ else if lt $value 0.5 }}low{{ else }}mid{{ end }}",
        0,
    ),
    (
        "{{ range $i, $s := query \"up\" }}{{ $i }}{{ $s.Labels.job }}{{ end }}",
        0,
    ),
    (
        "{{ with query \"up\" }}{{ . | first | value | humanize }}{{ else }}none{{ end }}",
        0,
    ),
    ("{{ define \"x\" }}a{{ end }}{{ template \"x\" . }}", 0),
    ("{{ block \"x\" . }}a{{ end }}", 0),
    (
        "{{ range . }}{{ if . }}{{ break }}{{ end }}{{ continue }}{{ end }}",
        0,
    ),
    ("{{/* comment */}}{{- 1 -}}", 0),
    ("{{ if $x := 1 }}{{ $x }}{{ else }}{{ $x }}{{ end }}", 0),
    (
        "{{ \"\\x41\\u0041\\101\\n\" }} {{ `raw` }} {{ 'c' }} {{ 0x1F }} {{ 0b101 }} {{ 1_000 }} {{ .5 }} {{ 1e3 }}",
        0,
    ),
    (
        "{{ $labels.a.b }} {{ (humanize 1).x }} {{ $y = 2 }} {{ nil }}",
        0,
    ),
    (
        "{{ reReplaceAll \"(.*)\" \"$1\" (index $labels \"x\") | toUpper | title }}",
        0,
    ),
    (
        "{{ stripPort \"a:1\" }} {{ stripDomain \"a.b\" }} {{ parseDuration \"1m\" }} {{ toTime 1 }} {{ safeHtml \"x\" }}",
        0,
    ),
    ("{{ $labels.instance", 1),
    ("{{ if $value }}x", 1),
    ("x{{ end }}", 1),
    ("{{ else }}", 1),
    ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", 1),
    ("{{ with . }}{{ else with 1 }}{{ end }}", 1),
    ("{{ $missing }}", 1),
    ("{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}", 1),
    ("{{ define \"t\" }}{{ $labels }}{{ end }}", 1),
    ("{{ nosuchfunc 1 }}", 1),
    ("{{ now }}", 1),
    ("{{ }}", 1),
    ("{{ if }}{{ end }}", 1),
    ("{{ humanize | }}", 0),
    ("{{ 1 | 2 }}", 1),
    ("{{ (humanize 1 }}", 1),
    ("{{ humanize 1) }}", 1),
    ("{{ ( ) }}", 1),
    ("{{ \"open }}", 1),
    ("{{ \"\\z\" }}", 1),
    ("{{/* open }}", 1),
    ("{{ break }}", 1),
    ("{{ 0x1g }}", 1),
    ("{{ 1__0 }}", 1),
    ("{{ true.x }}", 1),
    ("{{ .. }}", 1),
    ("{{ if 1 }}{{ define \"t\" }}{{ end }}{{ end }}", 1),
    ("{{ $x := }}", 1),
];

/// Whole rule files and promtool 2.42's exit code for each.
const FILE_VERDICTS: &[(&str, i32)] = &[
    // PromQL as of 2.42: holt_winters, not its Prometheus 3 name or later functions.
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 'holt_winters(x[5m], 0.5, 0.5)'",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 'double_exponential_smoothing(x[5m], 0.5, 0.5)'",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 'sort_by_label(x, \"a\")'",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 'limitk(1, x)'",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 'mad_over_time(x[5m])'",
        1,
    ),
    ("groups:", 0),
    ("groups: []", 0),
    ("groups:\n  - name: g\n    interval: 1.5m", 1),
    ("groups:\n  - name: g\n    interval: 0", 0),
    (
        "groups:\n  - name: g\n    interval: 1h30m\n    limit: 10",
        0,
    ),
    ("groups:\n  - name: g\n    limit: x", 1),
    ("groups:\n  - name: \"\"", 1),
    ("groups:\n  - rules: []", 1),
    ("groups:\n  - name: g\n    name: h", 1),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        for: 0\n        keep_firing_for: 10m",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        for: 5 minutes",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        labels:\n          a: 1\n          b: true",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        labels:\n          a: [1]",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        labels:\n        annotations:",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: \"\"\n        record: \"\"\n        expr: 1",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - alert: a b\n        expr: 1",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 1\n        for: 0s",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 1\n        annotations: {}",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 1\n        labels: {x: \"{{ $nope }}\"}",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: up[5m]",
        0,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: x{a=~\"(\"}",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: histogram_quantile(0.9, x) offset 5m @ start()",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: '{a=\"\"}'",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: quantile_over_time(x, y[1m])",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: x + ignoring(a) on(b) y",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: x offset 1m offset 2m",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: nosuchfunc(x)",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: 1 + \"a\"",
        1,
    ),
    (
        "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: rate(x[5m])[1m:] offset -1m",
        0,
    ),
    ("foo: 1", 1),
    ("- a", 1),
    ("groups: x", 1),
];

/// The rule file of one [`TEMPLATE_VERDICTS`] case: the template as an alert annotation
/// (single-quoted YAML, quotes doubled).
fn template_rule_file(template: &str) -> String {
    format!(
        "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        annotations:\n          x: '{}'\n",
        template.replace('\'', "''")
    )
}

fn promtool_installed() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Edge cases beyond the peer files (templates, durations, null keys, PromQL), whose
/// verdicts were taken from promtool 2.42 and are checked against it again when installed.
#[test]
fn edge_cases_get_promtools_verdict() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let promtool = promtool_installed();
    let cases = TEMPLATE_VERDICTS
        .iter()
        .map(|(template, code)| (template_rule_file(template), *code))
        .chain(
            FILE_VERDICTS
                .iter()
                .map(|(text, code)| (format!("{text}\n"), *code)),
        );
    for (index, (content, expected)) in cases.enumerate() {
        let file = dir.path().join(format!("case{index}.yml"));
        std::fs::write(&file, &content).expect("write the case");
        let output = meerkat_check(std::slice::from_ref(&file));
        assert_eq!(
            output.status.code(),
            Some(expected),
            "meerkat on:\n{content}\nstderr: {}",
            text(&output.stderr)
        );
        if promtool {
            let live = Command::new("promtool")
                .args(["check", "rules"])
                .arg(&file)
                .output()
                .expect("run promtool");
            assert_eq!(
                live.status.code(),
                Some(expected),
                "promtool on:\n{content}"
            );
        }
    }
}

#[test]
fn a_missing_file_fails_with_its_name() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.yml");
    let output = meerkat_check(std::slice::from_ref(&missing));
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: cannot read the file", missing.display())),
        "{stderr}"
    );
}
