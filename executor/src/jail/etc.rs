//! The jail's `/etc`: a few generated files plus the host files Python libraries look
//! for. Nothing else of the host's `/etc` (shadow, ssh keys, the executor's config) is
//! ever mounted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Host paths bound read-only when they exist: the dynamic loader's cache (faster
/// start), Debian's alternatives (numpy finds its BLAS through them), TLS roots for
/// HTTPS, the time zone, fontconfig and Debian's matplotlib defaults.
pub(crate) const HOST_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/localtime",
    "/etc/fonts",
    "/etc/matplotlibrc",
];

/// Writes the generated files under `dir` and returns every `(host, jail)` pair to
/// bind read-only.
pub fn stage(dir: &Path, uid: u32, gid: u32) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    // bwrap runs as the sandbox uid and must read these; the executor's umask is 0077.
    let readable = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(Error::setup("chmod", path))
    };
    std::fs::create_dir_all(dir).map_err(Error::setup("create", dir))?;
    readable(dir, 0o755)?;
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 sandbox:x:{uid}:{gid}:sandbox:/tmp:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nsandbox:x:{gid}:\n")),
        (
            "hosts",
            "127.0.0.1 localhost sandbox\n::1 localhost\n".into(),
        ),
    ];
    let mut binds = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(Error::setup("write", &path))?;
        readable(&path, 0o644)?;
        binds.push((path, Path::new("/etc").join(name)));
    }
    binds.extend(
        HOST_FILES
            .iter()
            .map(Path::new)
            .filter(|path| path.exists())
            .map(|path| (path.to_owned(), path.to_owned())),
    );
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_name_the_sandbox_user_and_nothing_of_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let binds = stage(dir.path(), 1234, 5678).unwrap();
        let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
        assert!(passwd.contains("sandbox:x:1234:5678:"));
        assert!(binds.iter().all(|(_, jail)| jail.starts_with("/etc")));
        assert!(!binds.iter().any(|(host, _)| host.ends_with("shadow")));
    }
}
