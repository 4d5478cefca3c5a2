//! Finding and loading rule files: globs (as `--rule-files` and promtool's `rule_files`
//! take them) and directories (every `*.yml` and `*.yaml` in them).

use std::path::{Path, PathBuf};

use crate::rulefmt::{self, RuleError};
use crate::rules::Group;

/// The files a pattern names, sorted: a glob, a directory's rule files, or one path.
pub fn glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list {pattern}: {e}"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        files.sort();
        return Ok(files);
    }
    if !pattern.contains(['*', '?', '[']) {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        ::glob::glob(pattern).map_err(|e| format!("{pattern:?} is not a valid pattern: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        files.push(entry.map_err(|e| format!("cannot read {}: {}", e.path().display(), e))?);
    }
    files.sort();
    Ok(files)
}

/// Reads, checks and builds the groups of one rule file; every problem found, with its
/// file and line.
pub fn load_file(path: &Path, default_interval_ms: i64) -> Result<Vec<Group>, Vec<RuleError>> {
    let (file, text) = rulefmt::read(path)?;
    let parsed = rulefmt::parse(&file, &text)?;
    parsed
        .groups
        .iter()
        .map(|group| {
            Group::from_file(&file, group, default_interval_ms).map_err(|reason| {
                vec![RuleError::Invalid {
                    file: file.clone(),
                    line: None,
                    column: None,
                    context: format!("group \"{}\": ", group.name.value),
                    reason,
                }]
            })
        })
        .collect()
}

/// Every group of every file the patterns name, in order.
pub fn load_patterns(
    patterns: &[String],
    default_interval_ms: i64,
) -> Result<Vec<Group>, Vec<RuleError>> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for pattern in patterns {
        let files = match glob(pattern) {
            Ok(files) => files,
            Err(reason) => {
                errors.push(RuleError::Invalid {
                    file: pattern.clone(),
                    line: None,
                    column: None,
                    context: String::new(),
                    reason,
                });
                continue;
            }
        };
        for file in files {
            match load_file(&file, default_interval_ms) {
                Ok(loaded) => groups.extend(loaded),
                Err(e) => errors.extend(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}
