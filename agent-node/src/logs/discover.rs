//! Finding container log files in the kubelet's layout:
//! `<root>/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, with rotated files
//! `<restart>.log.<YYYYMMDD-HHMMSS>` beside it (and `.gz` ones, which are never read: the
//! kubelet compresses a file only after the runtime stopped writing it, and by then it was
//! read through its uncompressed name).

use std::path::{Path, PathBuf};

/// The container a log file belongs to, as its path names it. Namespaces and pod names
/// cannot contain `_` (DNS labels and subdomains), so the directory name splits cleanly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodLogRef {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
}

/// What a file under a container directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub pod: PodLogRef,
    pub restart_count: u32,
    /// `<n>.log`, the file the runtime writes now (a rotated one is not live).
    pub live: bool,
}

/// The pod directory name `<namespace>_<pod>_<uid>`.
fn parse_pod_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.split('_');
    let namespace = parts.next().filter(|s| !s.is_empty())?;
    let pod = parts.next().filter(|s| !s.is_empty())?;
    let uid = parts.next().filter(|s| !s.is_empty())?;
    if parts.next().is_some() {
        return None;
    }
    Some((namespace.to_owned(), pod.to_owned(), uid.to_owned()))
}

/// `<n>.log` → (n, live); `<n>.log.<YYYYMMDD-HHMMSS>` → (n, rotated); anything else (`.gz`,
/// the kubelet's `.tmp` while compressing) → none.
fn parse_file_name(name: &str) -> Option<(u32, bool)> {
    let (restart, rest) = name.split_once(".log")?;
    if restart.is_empty() || !restart.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let restart: u32 = restart.parse().ok()?;
    if rest.is_empty() {
        return Some((restart, true));
    }
    let stamp = rest.strip_prefix('.')?;
    let (date, time) = stamp.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(date, 8) && digits(time, 6)).then_some((restart, false))
}

/// Parses a path under `pods_dir` into what it names.
pub fn parse_path(pods_dir: &Path, path: &Path) -> Option<LogFile> {
    let relative = path.strip_prefix(pods_dir).ok()?;
    let mut parts = relative.iter().map(|p| p.to_str());
    let pod_dir = parts.next()??;
    let container = parts.next()??;
    let file = parts.next()??;
    if parts.next().is_some() || container.is_empty() {
        return None;
    }
    let (namespace, pod, uid) = parse_pod_dir(pod_dir)?;
    let (restart_count, live) = parse_file_name(file)?;
    Some(LogFile {
        path: path.to_path_buf(),
        pod: PodLogRef {
            namespace,
            pod,
            uid,
            container: container.to_owned(),
        },
        restart_count,
        live,
    })
}

/// Every log file under `pods_dir` now. Directories vanishing while they are listed are
/// normal (pods end): such errors only mean fewer files.
pub fn scan(pods_dir: &Path) -> Vec<LogFile> {
    let mut found = Vec::new();
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return found;
    };
    for pod in pods.flatten() {
        let Ok(containers) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for container in containers.flatten() {
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                if let Some(log) = parse_path(pods_dir, &file.path()) {
                    found.push(log);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_container() {
        let root = Path::new("/r/var/log/pods");
        let log = parse_path(
            root,
            Path::new(
                "/r/var/log/pods/kube-system_coredns-5d78c9869d-abcde_0b1c-22-33/coredns/3.log",
            ),
        )
        .expect("a log path");
        assert_eq!(log.pod.namespace, "kube-system");
        assert_eq!(log.pod.pod, "coredns-5d78c9869d-abcde");
        assert_eq!(log.pod.uid, "0b1c-22-33");
        assert_eq!(log.pod.container, "coredns");
        assert_eq!((log.restart_count, log.live), (3, true));
        let rotated = parse_path(
            root,
            Path::new("/r/var/log/pods/a_b_c/d/0.log.20240501-101112"),
        )
        .expect("a rotated path");
        assert_eq!((rotated.restart_count, rotated.live), (0, false));
    }

    #[test]
    fn other_files_are_not_logs() {
        let root = Path::new("/p");
        for path in [
            "/p/a_b_c/d/0.log.20240501-101112.gz",
            "/p/a_b_c/d/0.log.20240501-101112.tmp",
            "/p/a_b_c/d/x.log",
            "/p/a_b_c/d/.log",
            "/p/a_b/d/0.log",
            "/p/a_b_c_d/e/0.log",
            "/p/a_b_c/0.log",
            "/p/a_b_c/d/e/0.log",
            "/elsewhere/a_b_c/d/0.log",
        ] {
            assert_eq!(parse_path(root, Path::new(path)), None, "{path}");
        }
    }
}
