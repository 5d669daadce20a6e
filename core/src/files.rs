//! Files a daemon reads its secrets and settings from.

use std::io;
use std::path::Path;

/// `Ok` if `path` is a regular file (after symbolic links), as a key, certificate or config
/// file must be: opening a FIFO or a device would block the reading thread (a reload, `check`)
/// until someone opened its other end, or reading it would never end.
pub fn regular_file(path: &Path) -> io::Result<()> {
    if std::fs::metadata(path)?.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, a FIFO or a device)",
        ))
    }
}
