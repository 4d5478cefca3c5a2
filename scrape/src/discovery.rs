//! File-based service discovery (`file_sd_configs`): JSON or YAML files listing target
//! groups, as Prometheus reads them.
//!
//! Each file holds a list of `{targets: [...], labels: {...}}`; every target also gets
//! `__meta_filepath`. File names may use glob patterns in their last element
//! (`/etc/targets/*.json`), as users write them for Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::TargetGroup;
use crate::relabel::is_valid_label_name;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupYaml {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `*`, `?` and `[...]` of a file name pattern, as a regex.
fn glob_regex(pattern: &str) -> Option<regex::Regex> {
    let mut regex = String::from("^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => regex.push_str("[^/]*"),
            '?' => regex.push_str("[^/]"),
            '[' => {
                regex.push('[');
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' {
                        regex.push_str("\\\\");
                    } else {
                        regex.push(c);
                    }
                }
                regex.push(']');
            }
            other => regex.push_str(&regex::escape(&other.to_string())),
        }
    }
    regex.push('$');
    regex::Regex::new(&regex).ok()
}

/// The files a pattern names now, sorted.
fn expand(pattern: &str) -> Result<Vec<std::path::PathBuf>, String> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{pattern:?} names no file"))?;
    if !name.contains(['*', '?', '[']) {
        return Ok(if path.exists() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        });
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let regex = glob_regex(name).ok_or_else(|| format!("{pattern:?} is not a valid pattern"))?;
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(format!("cannot list {}: {error}", dir.display())),
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| regex.is_match(n))
        {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The groups of one file; an error names the file and what is wrong.
fn read_file(file: &Path) -> Result<Vec<TargetGroup>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let parsed: Vec<GroupYaml> = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let mut groups = Vec::with_capacity(parsed.len());
    for (i, group) in parsed.into_iter().enumerate() {
        if let Some(bad) = group.labels.keys().find(|n| !is_valid_label_name(n)) {
            return Err(format!(
                "{}: group {i}: {bad:?} is not a valid label name",
                file.display()
            ));
        }
        let mut labels = group.labels;
        labels.insert("__meta_filepath".to_owned(), file.display().to_string());
        groups.push(TargetGroup {
            targets: group.targets,
            labels,
            source: format!("{}:{i}", file.display()),
        });
    }
    Ok(groups)
}

/// Reads every file the patterns name into target groups. A broken file is an error
/// naming it (and no groups: see [`FileSdCache`] for keeping its last good read).
pub fn read_file_sd(patterns: &[String]) -> Result<Vec<TargetGroup>, String> {
    let mut groups = Vec::new();
    for pattern in patterns {
        for file in expand(pattern)? {
            groups.extend(read_file(&file)?);
        }
    }
    Ok(groups)
}

/// The last good read of each file of one `file_sd_configs` entry. Prometheus keeps a
/// file's targets when a new version of it does not parse (an editor's half-written save,
/// a bad deploy of the file), so a typo never stops scraping; this does the same, per
/// file. A file that is gone (no longer matched) takes its targets with it.
#[derive(Debug, Default)]
pub struct FileSdCache {
    last_good: HashMap<PathBuf, Vec<TargetGroup>>,
}

impl FileSdCache {
    /// The groups of every file the patterns name, and an error for each file (or
    /// pattern) that could not be read this time; a broken file's last good groups are
    /// kept.
    pub fn read(&mut self, patterns: &[String]) -> (Vec<TargetGroup>, Vec<String>) {
        let mut groups = Vec::new();
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pattern in patterns {
            let files = match expand(pattern) {
                Ok(files) => files,
                Err(error) => {
                    // A directory that cannot be listed this time says nothing about its
                    // files: their last good targets stay.
                    errors.push(format!("{error} (last good targets are kept)"));
                    for (file, kept) in &self.last_good {
                        if !seen.contains(file) {
                            groups.extend(kept.iter().cloned());
                            seen.insert(file.clone());
                        }
                    }
                    continue;
                }
            };
            for file in files {
                seen.insert(file.clone());
                match read_file(&file) {
                    Ok(read) => {
                        groups.extend(read.iter().cloned());
                        self.last_good.insert(file, read);
                    }
                    Err(error) => {
                        if let Some(kept) = self.last_good.get(&file) {
                            groups.extend(kept.iter().cloned());
                            errors.push(format!("{error} (its last good targets are kept)"));
                        } else {
                            errors.push(error);
                        }
                    }
                }
            }
        }
        self.last_good.retain(|file, _| seen.contains(file));
        (groups, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_files_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"[{"targets": ["h1:9100", "h2:9100"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yml"), "- targets: [h3:9100]\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), "ignored").unwrap();
        let pattern = |p: &str| dir.path().join(p).display().to_string();
        let groups =
            read_file_sd(&[pattern("*.json"), pattern("b.yml"), pattern("missing.yml")]).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].targets, ["h1:9100", "h2:9100"]);
        assert_eq!(groups[0].labels["env"], "prod");
        assert_eq!(groups[0].labels["__meta_filepath"], pattern("a.json"));
        assert_eq!(groups[1].targets, ["h3:9100"]);

        std::fs::write(dir.path().join("bad.json"), r#"[{"targets": "h1"}]"#).unwrap();
        let error = read_file_sd(&[pattern("bad.json")]).unwrap_err();
        assert!(error.contains("bad.json"), "{error}");
        std::fs::write(
            dir.path().join("badlabel.yml"),
            "- targets: [a]\n  labels: {'a-b': x}\n",
        )
        .unwrap();
        let error = read_file_sd(&[pattern("badlabel.yml")]).unwrap_err();
        assert!(error.contains("not a valid label name"), "{error}");
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_targets_and_a_removed_one_loses_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.json");
        let other = dir.path().join("b.json");
        std::fs::write(&good, r#"[{"targets": ["h1:9100"]}]"#).unwrap();
        std::fs::write(&other, r#"[{"targets": ["h2:9100"]}]"#).unwrap();
        let patterns = vec![format!("{}/*.json", dir.path().display())];
        let mut cache = FileSdCache::default();
        let targets = |groups: &[TargetGroup]| -> Vec<String> {
            let mut all: Vec<String> = groups.iter().flat_map(|g| g.targets.clone()).collect();
            all.sort();
            all
        };
        let (groups, errors) = cache.read(&patterns);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(targets(&groups), ["h1:9100", "h2:9100"]);

        // A half-written save: a.json's targets stay, the error says so.
        std::fs::write(&good, r#"[{"targets": ["h1:91"#).unwrap();
        let (groups, errors) = cache.read(&patterns);
        assert_eq!(targets(&groups), ["h1:9100", "h2:9100"]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("a.json") && errors[0].contains("kept"),
            "{errors:?}"
        );

        // A removed file takes its targets; a new broken file has none to keep.
        std::fs::remove_file(&other).unwrap();
        std::fs::write(dir.path().join("c.json"), "not json").unwrap();
        let (groups, errors) = cache.read(&patterns);
        assert_eq!(targets(&groups), ["h1:9100"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
