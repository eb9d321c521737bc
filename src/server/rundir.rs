//! Where the graceful-upgrade socket and the pid file live when `server:` does not say.
//!
//! Not in `/tmp` itself: anyone can create names there, so another local user could plant a
//! symlink at the pid-file path (the gateway would write through it) or bind the upgrade socket
//! first (and be handed the listening sockets). A directory only this user can enter, refused
//! when it exists with another owner or looser permissions, closes both.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The effective user id. `/proc/self` belongs to the process's effective user (proc(5)); std
/// has no `geteuid` and the workspace forbids `unsafe`.
fn euid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// `$XDG_RUNTIME_DIR/portcullis`, else `/run/portcullis` for root, else
/// `<temp dir>/portcullis-<uid>`.
pub fn default_dir() -> std::io::Result<PathBuf> {
    let uid = euid()?;
    Ok(choose(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        uid,
        &std::env::temp_dir(),
    ))
}

fn choose(xdg: Option<PathBuf>, uid: u32, temp: &Path) -> PathBuf {
    match xdg.filter(|d| d.is_absolute()) {
        Some(d) => d.join("portcullis"),
        None if uid == 0 => PathBuf::from("/run/portcullis"),
        None => temp.join(format!("portcullis-{uid}")),
    }
}

/// Creates `dir` with mode 0700, or accepts it when it already is a real directory (not a
/// symlink) of this user that nobody else may enter.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    let uid = euid()?;
    if !m.file_type().is_dir() {
        return Err(Error::other(format!(
            "{} is not a directory (a symlink is refused)",
            dir.display()
        )));
    }
    if m.uid() != uid {
        return Err(Error::other(format!(
            "{} belongs to uid {}, not to this user (uid {uid})",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(Error::other(format!(
            "{} is accessible to other users (mode {:o}; want 0700)",
            dir.display(),
            m.mode() & 0o777
        )));
    }
    Ok(())
}

/// Writes the pid file with mode 0600, refusing to follow a symlink at its path.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    // `mode` applies only when the file is created; an older file keeps its own.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_xdg_then_run_for_root_then_a_per_user_temp_dir() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            choose(Some("/run/user/1000".into()), 1000, tmp),
            Path::new("/run/user/1000/portcullis")
        );
        assert_eq!(
            choose(Some("relative".into()), 0, tmp),
            Path::new("/run/portcullis")
        );
        assert_eq!(choose(None, 0, tmp), Path::new("/run/portcullis"));
        assert_eq!(choose(None, 1000, tmp), Path::new("/tmp/portcullis-1000"));
    }

    #[test]
    fn private_dir_is_created_0700_and_a_shared_one_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run");
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private_dir(&dir).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_private_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("accessible to other users"), "{e}");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(base.path(), &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn pid_file_is_0600_and_never_written_through_a_symlink() {
        let base = tempfile::tempdir().unwrap();
        let pid = base.path().join("p.pid");
        std::fs::write(&pid, "old").unwrap();
        std::fs::set_permissions(&pid, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_pid_file(&pid).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(std::fs::metadata(&pid).unwrap().mode() & 0o777, 0o600);

        let victim = base.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = base.path().join("link.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_pid_file(&link).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
