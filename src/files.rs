//! Writing files where another account may also write: Headscale's data directory (owned by the
//! `headscale` user under upstream's unit), a node-exporter textfile directory, the directory of
//! the API key file. Everything headwarden writes as root outside its own state goes through here.
//!
//! Rules (each is a finding of the November 2026 security review):
//! 1. A new file is created under a random name with `O_CREAT|O_EXCL` (tempfile), so a name
//!    planted in advance (a symlink to `/root/.ssh/authorized_keys`) is never opened, then renamed
//!    over the target. A rename replaces a link instead of writing through it.
//! 2. A file that is read from such a directory is opened with `O_NOFOLLOW` and must be a regular
//!    file: a planted link cannot make headwarden copy a root-only file into a backup.
//! 3. A replaced file keeps the owner, group and mode of what it replaces (or of the backup that
//!    recorded them): a restored database stays the `headscale` user's.
//! 4. headwarden's own directories (`state_dir` and below) must be owned by headwarden's user and
//!    writable by nobody else, or a swapped binary would run as root.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link or not a regular file; refusing to read or replace it")]
    NotRegular { path: PathBuf },
    #[error("{path} is owned by uid {uid}, not by headwarden's user (uid {expected}) or root")]
    ForeignOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error("{path} is writable by other users (mode {mode:04o})")]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error(
        "{path} is larger than {max} bytes, more than such a file ever holds; refusing to copy it"
    )]
    TooLarge { path: PathBuf, max: u64 },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Owner, group and permission bits of a file, as restored onto its replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl FileMeta {
    pub fn of(m: &std::fs::Metadata) -> FileMeta {
        FileMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        }
    }
}

/// The metadata of an existing regular file at `path` (not following a link); `None` when
/// nothing is there; an error for a link, a directory or anything else.
pub fn regular_meta(path: &Path) -> Result<Option<FileMeta>, FileError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(Some(FileMeta::of(&m))),
        Ok(_) => Err(FileError::NotRegular {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// Opens a regular file for reading without following a link at its last component.
pub fn open_nofollow(path: &Path) -> Result<File, FileError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FileError::NotRegular {
                    path: path.to_path_buf(),
                }
            } else {
                io("opening", path)(e)
            }
        })?;
    let m = f.metadata().map_err(io("reading", path))?;
    if !m.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(f)
}

/// A replacement for `target`, written and synced under a random name beside it, not yet in
/// place: [`Staged::commit`] renames it over `target`; dropping it removes it.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl Staged {
    pub fn commit(self) -> Result<(), FileError> {
        let target = self.target;
        self.tmp
            .persist(&target)
            .map_err(|e| io("renaming into place", &target)(e.error))?;
        sync_dir(target.parent().unwrap_or(Path::new(".")));
        Ok(())
    }
}

/// Prepares the replacement of `target` with the bytes of `content`, without following anything
/// planted at `target` or beside it. The new file gets `meta` (or, when `None`, the metadata of
/// the file it replaces, or `default_mode` owned by the caller when there is none).
pub fn stage(
    target: &Path,
    content: &mut dyn std::io::Read,
    meta: Option<FileMeta>,
    default_mode: u32,
) -> Result<Staged, FileError> {
    let existing = regular_meta(target)?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".headwarden-")
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    std::io::copy(content, tmp.as_file_mut()).map_err(io("writing", tmp.path()))?;
    let file = tmp.as_file();
    match meta.or(existing) {
        Some(m) => apply_meta(file, target, m)?,
        None => file
            .set_permissions(std::fs::Permissions::from_mode(default_mode))
            .map_err(io("setting the mode of", target))?,
    }
    file.sync_all().map_err(io("fsync", target))?;
    Ok(Staged {
        tmp,
        target: target.to_path_buf(),
    })
}

/// [`stage`], then [`Staged::commit`].
pub fn replace_with(
    target: &Path,
    content: &mut dyn std::io::Read,
    meta: Option<FileMeta>,
    default_mode: u32,
) -> Result<(), FileError> {
    stage(target, content, meta, default_mode)?.commit()
}

/// Stages a copy of the regular file `source` (a backup made by [`copy_preserving`], which
/// carries the owner and mode of the file it copied) as the replacement of `target`.
pub fn stage_copy(source: &Path, target: &Path) -> Result<Staged, FileError> {
    let mut f = open_nofollow(source)?;
    let meta = FileMeta::of(&f.metadata().map_err(io("reading", source))?);
    stage(target, &mut f, Some(meta), meta.mode)
}

/// Replaces `target` with a copy of the regular file `source` (which keeps its recorded owner
/// and mode: a backup copy made by [`copy_preserving`]).
pub fn restore_copy(source: &Path, target: &Path) -> Result<(), FileError> {
    stage_copy(source, target)?.commit()
}

/// Writes headwarden's own file `target` (temp file + rename, see [`replace_with`]): owned by
/// headwarden's account with exactly `mode`, both set on the open temporary file before the
/// rename. Nothing is taken from whatever is at `target` now (another account that may write
/// the directory chooses that), and nothing is changed by path afterwards.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let own = FileMeta {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mode,
    };
    replace_with(target, &mut &bytes[..], Some(own), mode)
}

/// The most headwarden copies of a small file another account writes (a noise key, a config, a
/// compose file): a sparse multi-GB file there must not fill `state_dir` during the downtime.
pub const SMALL_FILE_MAX: u64 = 4 << 20;

/// Copies the regular file `source` (in a directory another account may write) to the new file
/// `dest` in headwarden's own directory, keeping its owner, group and mode there. Returns them.
/// A file over [`SMALL_FILE_MAX`] is refused (and nothing is left at `dest`).
pub fn copy_preserving(source: &Path, dest: &Path) -> Result<FileMeta, FileError> {
    let f = open_nofollow(source)?;
    let meta = FileMeta::of(&f.metadata().map_err(io("reading", source))?);
    let _ = std::fs::remove_file(dest);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io("creating", dest))?;
    let copied = std::io::copy(&mut f.take(SMALL_FILE_MAX + 1), &mut out)
        .map_err(io("copying into", dest))?;
    if copied > SMALL_FILE_MAX {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(FileError::TooLarge {
            path: source.to_path_buf(),
            max: SMALL_FILE_MAX,
        });
    }
    apply_meta(&out, dest, meta)?;
    out.flush().map_err(io("writing", dest))?;
    out.sync_all().map_err(io("fsync", dest))?;
    Ok(meta)
}

/// Gives the open file `f` (at `path`) the owner, group and mode of `meta`.
pub fn apply_meta(f: &File, path: &Path, meta: FileMeta) -> Result<(), FileError> {
    let current = FileMeta::of(&f.metadata().map_err(io("reading", path))?);
    if (current.uid, current.gid) != (meta.uid, meta.gid) {
        std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid))
            .map_err(io("setting the owner of", path))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(meta.mode))
        .map_err(io("setting the mode of", path))
}

/// Gives `dir` and the entries directly in it to `uid:gid`, each through its own descriptor
/// opened without following a link (a link in it is refused). For a directory only we could
/// write until now: the staging data the candidate runs on as production's account.
pub fn hand_over(dir: &Path, uid: u32, gid: u32) -> Result<(), FileError> {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(p)
            .map_err(io("opening", p))
    };
    let chown = |f: &File, p: &Path| {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(io("handing over", p))
    };
    for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let path = entry.map_err(io("listing", dir))?.path();
        chown(&open(&path)?, &path)?;
    }
    chown(&open(dir)?, dir)
}

/// Creates `dir` (and missing parents) and sets exactly `mode` on it; refuses an existing
/// directory that another account owns or may write.
pub fn owned_dir(dir: &Path, mode: u32) -> Result<(), FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io("creating", dir))?;
    check_owned(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", dir))
}

/// `path` must be a directory (not a link) owned by root or by headwarden's own user and not
/// writable by group or others.
pub fn check_owned(path: &Path) -> Result<(), FileError> {
    let m = std::fs::symlink_metadata(path).map_err(io("reading", path))?;
    if !m.file_type().is_dir() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Err(FileError::ForeignOwner {
            path: path.to_path_buf(),
            uid: m.uid(),
            expected: me,
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(FileError::OpenToOthers {
            path: path.to_path_buf(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

/// `state_dir`'s ancestors: each must be owned by root or headwarden's user, and writable by
/// others only with the sticky bit (`/tmp`), where nobody else can rename what is inside.
pub fn check_ancestors(path: &Path) -> Result<(), FileError> {
    let me = nix::unistd::geteuid().as_raw();
    let abs = std::path::absolute(path).map_err(io("resolving", path))?;
    for dir in abs.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(io("reading", dir))?;
        if m.uid() != me && m.uid() != 0 {
            return Err(FileError::ForeignOwner {
                path: dir.to_path_buf(),
                uid: m.uid(),
                expected: me,
            });
        }
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            return Err(FileError::OpenToOthers {
                path: dir.to_path_buf(),
                mode: m.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_replaced_not_written_through() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        std::fs::write(&victim, "root secret").expect("victim");
        let target = d.path().join("db.sqlite");
        std::os::unix::fs::symlink(&victim, &target).expect("link");
        assert!(matches!(
            write_atomic(&target, b"new", 0o600),
            Err(FileError::NotRegular { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root secret"
        );
        // A link planted at a predictable temp name is never opened either.
        std::fs::remove_file(&target).expect("rm");
        std::os::unix::fs::symlink(&victim, d.path().join("db.sqlite.headwarden-restore"))
            .expect("link");
        write_atomic(&target, b"new", 0o600).expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root secret"
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "new");
    }

    #[test]
    fn own_files_get_headwarden_s_owner_and_exact_mode_never_what_was_there() {
        // Security review N5: another account that may write the directory leaves its own
        // file, mode 0666, at the name; the write must not inherit either.
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("headwarden.prom");
        std::fs::write(&target, "planted").expect("plant");
        std::os::unix::fs::chown(&target, Some(4242), Some(4242))
            .expect("chown (tests run as root)");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        write_atomic(&target, b"metrics", 0o644).expect("write");
        let m = regular_meta(&target).expect("meta").expect("written");
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!((m.uid, m.mode), (me, 0o644), "owner and mode");
        // A narrower file there does not narrow headwarden's either: the mode is exactly asked.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        write_atomic(&target, b"metrics", 0o644).expect("write");
        assert_eq!(
            regular_meta(&target).expect("meta").map(|m| m.mode),
            Some(0o644)
        );
    }

    #[test]
    fn copies_keep_owner_and_mode_and_refuse_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("config.yaml");
        std::fs::write(&src, "a: 1").expect("src");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let backup = d.path().join("backup.yaml");
        let meta = copy_preserving(&src, &backup).expect("copy");
        assert_eq!(meta.mode, 0o640);
        assert_eq!(regular_meta(&backup).expect("meta"), Some(meta));
        std::fs::write(&src, "a: 2").expect("edit");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        restore_copy(&backup, &src).expect("restore");
        assert_eq!(std::fs::read_to_string(&src).expect("read"), "a: 1");
        assert_eq!(
            regular_meta(&src).expect("meta").map(|m| m.mode),
            Some(0o640)
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&src, &link).expect("link");
        assert!(matches!(
            copy_preserving(&link, &d.path().join("x")),
            Err(FileError::NotRegular { .. })
        ));
    }

    #[test]
    fn an_oversized_small_file_is_refused_and_leaves_nothing() {
        // Security review N11: a sparse multi-GB noise key must not fill state_dir.
        let d = tempfile::tempdir().expect("tempdir");
        let key = d.path().join("noise_private.key");
        let f = File::create(&key).expect("key");
        f.set_len(SMALL_FILE_MAX + 1).expect("sparse");
        let copy = d.path().join("copy");
        assert!(matches!(
            copy_preserving(&key, &copy),
            Err(FileError::TooLarge { .. })
        ));
        assert!(!copy.exists());
        f.set_len(100).expect("truncate");
        copy_preserving(&key, &copy).expect("a normal key is copied");
    }

    #[test]
    fn directories_open_to_others_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let open = d.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(
            check_owned(&open),
            Err(FileError::OpenToOthers { .. })
        ));
        owned_dir(&d.path().join("mine/versions"), 0o755).expect("owned");
        check_owned(&d.path().join("mine/versions")).expect("checked");
    }
}
