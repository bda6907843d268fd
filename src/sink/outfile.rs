//! Opening the files walwitness writes (`--out`, `--raw-out`, `report --html`) so that another local
//! user cannot turn them against us.
//!
//! The attacks: a symbolic link planted at the path (the write would land in its target: a root-run
//! capture truncated a root-only file), a hard link to someone else's file, a FIFO (an open that never
//! returns), or a file another user owns (who can then edit the evidence at will). So: the open never
//! follows a symbolic link (`O_NOFOLLOW`) nor blocks (`O_NONBLOCK`), and an existing file must be a
//! regular file with one name, owned by the user running walwitness (or a character device such as
//! `/dev/null`: only root can create one). New files are created `0600`.
//! Every check is made on the opened descriptor (`fstat`), so a path swapped after the check changes
//! nothing.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The effective user id: who files must belong to.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// What the caller wants to do with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write (the log: its tail is read back and repaired).
    ReadWrite,
    /// Append (and read: a header may be checked).
    Append,
    /// Write only (a report, replaced whole).
    Write,
}

/// An opened output file.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    /// Created by this open (it did not exist).
    pub created: bool,
    /// A regular file (else a character device such as /dev/null).
    pub regular: bool,
    /// Permission bits of the file as found (`0o600` for a new one).
    pub mode: u32,
}

/// Opens `path` for writing without following a symbolic link, creating it with mode 0600 when it
/// does not exist; an existing file must be a regular file, with one hard link, owned by us. The
/// error says what is wrong and what to do, without repeating the path (callers name it).
pub fn open_private(path: &Path, access: Access) -> io::Result<Opened> {
    let options = |create_new: bool| {
        let mut o = OpenOptions::new();
        match access {
            Access::ReadWrite => o.read(true).write(true),
            Access::Append => o.read(true).append(true),
            Access::Write => o.write(true),
        };
        if create_new {
            o.create_new(true).mode(0o600);
        }
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
        o
    };
    // Create-or-open in two steps, so we know whether the file is ours from the start.
    let (file, created) = match options(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match options(false).open(path) {
            Ok(f) => (f, false),
            Err(e) => return Err(explain_open_error(e)),
        },
        Err(e) => return Err(explain_open_error(e)),
    };
    let meta = file.metadata()?;
    let regular = meta.file_type().is_file();
    // A character device (/dev/null, /dev/full, a terminal) is a sink, not a file someone can edit, and
    // only root can create one: accepted as it is. FIFOs, sockets, directories and block devices are not.
    if !regular && !meta.file_type().is_char_device() {
        return Err(refused(NOT_REGULAR));
    }
    if !created && regular {
        let me = euid();
        if meta.uid() != me {
            return Err(refused(&format!(
                "it belongs to uid {}, not to the user running walwitness (uid {me}), so its owner could change what is written: remove it, or give another path",
                meta.uid()
            )));
        }
        if meta.nlink() != 1 {
            return Err(refused(&format!(
                "it has {} hard links, so writing it would change another file too: remove the other links, or give another path",
                meta.nlink()
            )));
        }
    }
    // O_NONBLOCK only guarded the open against a FIFO; regular files ignore it, but clear it anyway.
    clear_nonblock(&file)?;
    Ok(Opened { file, created, regular, mode: if created { 0o600 } else { meta.mode() & 0o7777 } })
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags.difference(rustix::fs::OFlags::NONBLOCK))?;
    Ok(())
}

const NOT_REGULAR: &str =
    "it is not a regular file (a directory, FIFO, socket or device): give the path of a regular file";

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("refusing to write it: {why}"))
}

fn explain_open_error(e: io::Error) -> io::Error {
    // ENXIO: a FIFO without a reader, opened for writing without blocking.
    if e.raw_os_error() == Some(libc::ENXIO) {
        return refused(NOT_REGULAR);
    }
    if e.raw_os_error() == Some(libc::ELOOP) {
        return refused(
            "it is a symbolic link, and walwitness never writes through one (another user could point it at any file you can write): give the real path",
        );
    }
    e
}

/// Whether group or others have any access.
pub fn exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_private_files_and_opens_own_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new");
        let o = open_private(&p, Access::ReadWrite).unwrap();
        assert!(o.created);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        drop(o);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = open_private(&p, Access::Append).unwrap();
        assert!(!o.created);
        assert_eq!(o.mode, 0o644);
        assert!(exposed(o.mode));
    }

    #[test]
    fn symlink_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("precious");
        std::fs::write(&target, "root-only data\n").unwrap();
        let link = d.path().join("out.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for a in [Access::ReadWrite, Access::Append, Access::Write] {
            let e = open_private(&link, a).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        // A dangling link is not followed to create its target either.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("created-through-link"), &dangling).unwrap();
        assert!(open_private(&dangling, Access::Write).is_err());
        assert!(!d.path().join("created-through-link").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root-only data\n");
    }

    #[test]
    fn fifo_hard_link_and_directory_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).unwrap();
        let e = open_private(&fifo, Access::Write).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let o = open_private(Path::new("/dev/null"), Access::ReadWrite).unwrap();
        assert!(!o.regular && !o.created);
        let e = open_private(d.path(), Access::Append).unwrap_err();
        assert!(e.kind() == io::ErrorKind::IsADirectory || e.to_string().contains("not a regular"), "{e}");
        let a = d.path().join("a");
        std::fs::write(&a, "x").unwrap();
        std::fs::hard_link(&a, d.path().join("b")).unwrap();
        let e = open_private(&a, Access::Write).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
    }

    #[test]
    fn another_users_file_is_refused() {
        if euid() != 0 {
            return; // needs root to give a file away
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("theirs");
        std::fs::write(&p, "").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let e = open_private(&p, Access::ReadWrite).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
    }
}
