//! Releases on disk, laid out as Kamal and Capistrano do:
//!
//! ```text
//! APP_DIR/releases/<version>/   one unpacked artifact per version
//! APP_DIR/current -> releases/<version>
//! ```
//!
//! Every step that a kill could interrupt leaves either the old state or the new one: an
//! artifact is unpacked into `releases/.incoming-<version>` and renamed into place, and
//! `current` is replaced by renaming a new symlink over it. [`Releases::recover`] removes
//! what an interrupted run left behind.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the artifact's sha256 is {actual}, not the expected {expected}")]
    Checksum { expected: String, actual: String },
    #[error("`{0}` is not a release version (letters, digits, . _ - only)")]
    BadVersion(String),
    #[error("release {0} is not installed")]
    Missing(String),
    #[error("the artifact is not a gzip'd tar archive: {0}")]
    Archive(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let path = path.to_owned();
    move |source| ReleaseError::Io { action, path, source }
}

/// A version names a directory: keep it to a safe alphabet.
fn check_version(version: &str) -> Result<(), ReleaseError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && !version.starts_with('.')
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(ReleaseError::BadVersion(version.to_owned())) }
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The lowercase hex SHA-256 of a file, read in pieces.
fn file_sha256(path: &Path) -> Result<String, ReleaseError> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(io("read", path))?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

pub struct Releases {
    root: PathBuf,
}

impl Releases {
    /// Opens (and creates) `app_dir`, cleaning up after an interrupted run.
    pub fn open(app_dir: impl Into<PathBuf>) -> Result<Self, ReleaseError> {
        let releases = Self { root: app_dir.into() };
        fs::create_dir_all(releases.dir()).map_err(io("create", &releases.dir()))?;
        releases.recover()?;
        Ok(releases)
    }

    fn dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn path(&self, version: &str) -> PathBuf {
        self.dir().join(version)
    }

    /// Removes half-downloaded and half-unpacked artifacts and a half-made symlink.
    pub fn recover(&self) -> Result<(), ReleaseError> {
        let entries = fs::read_dir(self.dir()).map_err(io("read", &self.dir()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".incoming-") {
                fs::remove_dir_all(entry.path()).map_err(io("remove", &entry.path()))?;
            } else if name.starts_with(".download-") {
                fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
            }
        }
        let pending = self.root.join("current.new");
        if fs::symlink_metadata(&pending).is_ok() {
            fs::remove_file(&pending).map_err(io("remove", &pending))?;
        }
        Ok(())
    }

    /// The version `current` points at.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.link()).ok()?;
        target.file_name().map(|name| name.to_string_lossy().into_owned())
    }

    pub fn installed(&self, version: &str) -> bool {
        check_version(version).is_ok() && self.path(version).is_dir()
    }

    /// Every installed version, oldest first (by when it was installed).
    pub fn list(&self) -> Result<Vec<String>, ReleaseError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(self.dir()).map_err(io("read", &self.dir()))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            found.push((modified, name));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, name)| name).collect())
    }

    /// Where an artifact for `version` is downloaded to before it is installed; hidden, so
    /// that [`Releases::recover`] removes it after an interrupted download.
    pub fn download_path(&self, version: &str) -> Result<PathBuf, ReleaseError> {
        check_version(version)?;
        Ok(self.dir().join(format!(".download-{version}.tar.gz")))
    }

    /// Verifies the artifact file against `expected_sha256` and unpacks it as `version`,
    /// reading it in pieces (an artifact can be larger than the instance's memory).
    /// Installing a version that is already there does nothing.
    pub fn install(&self, version: &str, artifact: &Path, expected_sha256: &str) -> Result<PathBuf, ReleaseError> {
        check_version(version)?;
        let actual = file_sha256(artifact)?;
        if !actual.eq_ignore_ascii_case(expected_sha256.trim()) {
            return Err(ReleaseError::Checksum { expected: expected_sha256.to_owned(), actual });
        }
        let target = self.path(version);
        if target.is_dir() {
            return Ok(target);
        }
        let incoming = self.dir().join(format!(".incoming-{version}"));
        if incoming.exists() {
            fs::remove_dir_all(&incoming).map_err(io("remove", &incoming))?;
        }
        fs::create_dir_all(&incoming).map_err(io("create", &incoming))?;
        let file = fs::File::open(artifact).map_err(io("open", artifact))?;
        if let Err(err) = unpack(std::io::BufReader::new(file), &incoming) {
            // A broken archive leaves nothing behind.
            let _ = fs::remove_dir_all(&incoming);
            return Err(err);
        }
        fs::rename(&incoming, &target).map_err(io("move into place", &target))?;
        Ok(target)
    }

    /// Removes an installed release that is not current (one whose deploy failed).
    pub fn remove(&self, version: &str) -> Result<bool, ReleaseError> {
        check_version(version)?;
        if self.current().as_deref() == Some(version) || !self.installed(version) {
            return Ok(false);
        }
        fs::remove_dir_all(self.path(version)).map_err(io("remove", &self.path(version)))?;
        Ok(true)
    }

    /// Points `current` at `version` in one rename.
    pub fn activate(&self, version: &str) -> Result<(), ReleaseError> {
        if !self.installed(version) {
            return Err(ReleaseError::Missing(version.to_owned()));
        }
        let pending = self.root.join("current.new");
        if fs::symlink_metadata(&pending).is_ok() {
            fs::remove_file(&pending).map_err(io("remove", &pending))?;
        }
        std::os::unix::fs::symlink(Path::new("releases").join(version), &pending).map_err(io("link", &pending))?;
        fs::rename(&pending, self.link()).map_err(io("switch", &self.link()))
    }

    /// Deletes the oldest releases beyond `keep`, never the current one nor `rollback_target`
    /// (the release a rollback would switch back to).
    pub fn prune(&self, keep: usize, rollback_target: Option<&str>) -> Result<Vec<String>, ReleaseError> {
        let current = self.current();
        let all = self.list()?;
        let excess = all.len().saturating_sub(keep.max(1));
        let mut removed = Vec::new();
        let kept = |v: &String| Some(v.as_str()) == current.as_deref() || Some(v.as_str()) == rollback_target;
        for version in all.into_iter().filter(|v| !kept(v)).take(excess) {
            fs::remove_dir_all(self.path(&version)).map_err(io("remove", &self.path(&version)))?;
            removed.push(version);
        }
        Ok(removed)
    }
}

/// Unpacks a `.tar.gz` into `into`, refusing entries that would land outside it.
fn unpack(artifact: impl std::io::Read, into: &Path) -> Result<(), ReleaseError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(artifact));
    // Whatever modes the archive carries, no file of a release is writable by group or others.
    archive.set_mask(0o022);
    let entries = archive.entries().map_err(|e| ReleaseError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ReleaseError::Archive(e.to_string()))?;
        // `unpack_in` skips entries with `..` or absolute paths.
        let unpacked = entry.unpack_in(into).map_err(|e| ReleaseError::Archive(e.to_string()))?;
        if !unpacked {
            let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(ReleaseError::Archive(format!("entry `{name}` points outside the release directory")));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.tar.gz` with the given files.
    pub(crate) fn artifact(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            builder.append_data(&mut header, name, body.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// Installs `bytes` as the agent does: from a downloaded file.
    fn install(releases: &Releases, version: &str, bytes: &[u8], sha256: &str) -> Result<PathBuf, ReleaseError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        releases.install(version, file.path(), sha256)
    }

    #[test]
    fn install_activate_and_switch_back_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let v1 = artifact(&[("app.txt", "one")]);
        let v2 = artifact(&[("app.txt", "two")]);
        install(&releases, "v1", &v1, &sha256_hex(&v1)).unwrap();
        releases.activate("v1").unwrap();
        install(&releases, "v2", &v2, &sha256_hex(&v2)).unwrap();
        releases.activate("v2").unwrap();
        assert_eq!(releases.current().as_deref(), Some("v2"));
        assert_eq!(fs::read_to_string(dir.path().join("current/app.txt")).unwrap(), "two");
        // Rollback: v1 is still on disk.
        releases.activate("v1").unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("current/app.txt")).unwrap(), "one");
    }

    #[test]
    fn a_wrong_checksum_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let bytes = artifact(&[("app.txt", "one")]);
        let err = install(&releases, "v1", &bytes, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, ReleaseError::Checksum { .. }), "{err}");
        assert!(!releases.installed("v1"));
        assert!(matches!(releases.activate("v1"), Err(ReleaseError::Missing(_))));
    }

    #[test]
    fn bad_versions_and_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let bytes = artifact(&[("a", "b")]);
        for version in ["../etc", "", ".hidden", "a/b"] {
            assert!(matches!(
                install(&releases, version, &bytes, &sha256_hex(&bytes)),
                Err(ReleaseError::BadVersion(_))
            ));
        }
        let junk = b"not a tarball".to_vec();
        assert!(matches!(install(&releases, "v9", &junk, &sha256_hex(&junk)), Err(ReleaseError::Archive(_))));
        assert!(!releases.installed("v9"));
    }

    #[test]
    fn an_interrupted_install_or_switch_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let releases = Releases::open(dir.path()).unwrap();
            let bytes = artifact(&[("app.txt", "one")]);
            install(&releases, "v1", &bytes, &sha256_hex(&bytes)).unwrap();
            releases.activate("v1").unwrap();
        }
        // What a kill during the next install and switch leaves behind.
        fs::write(dir.path().join("releases/.download-v2.tar.gz"), b"half an artif").unwrap();
        fs::create_dir_all(dir.path().join("releases/.incoming-v2/half")).unwrap();
        std::os::unix::fs::symlink("releases/v2", dir.path().join("current.new")).unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let hidden = fs::read_dir(dir.path().join("releases")).unwrap().flatten();
        assert_eq!(hidden.filter(|e| e.file_name().to_string_lossy().starts_with('.')).count(), 0);
        assert_eq!(releases.current().as_deref(), Some("v1"), "the old release is still current");
        assert_eq!(releases.list().unwrap(), ["v1"]);
        assert!(!dir.path().join("current.new").exists());
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        for v in ["v1", "v2", "v3", "v4"] {
            let bytes = artifact(&[("app.txt", v)]);
            install(&releases, v, &bytes, &sha256_hex(&bytes)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        releases.activate("v1").unwrap();
        let removed = releases.prune(3, Some("v2")).unwrap();
        assert_eq!(removed, ["v3"], "the rollback target v2 stays, whatever its age");
        assert_eq!(releases.list().unwrap(), ["v1", "v2", "v4"]);
        assert!(releases.remove("v4").unwrap(), "a failed release goes");
        assert!(!releases.remove("v1").unwrap(), "never the current one");
    }

    #[test]
    fn unpacked_files_are_never_writable_by_group_or_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o777);
        header.set_cksum();
        builder.append_data(&mut header, "run.sh", &b"ok"[..]).unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let path = install(&releases, "v1", &bytes, &sha256_hex(&bytes)).unwrap();
        let mode = std::fs::metadata(path.join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
