//! Files: reading the inputs, writing the results (atomically, keeping permissions).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::options::{PinError, Source};

/// Where the result goes.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
    InPlace,
}

/// Reads the inputs: files, directories (recursively, `*.yaml` and `*.yml`, sorted, hidden
/// directories skipped), and `-` for stdin. No inputs means stdin. Every file that cannot be read
/// is named in the second list (reading goes on).
pub fn read_inputs(inputs: &[PathBuf]) -> (Vec<Source>, Vec<String>) {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let mut take = |r: Result<Source, PinError>| match r {
        Ok(s) => out.push(s),
        Err(e) => unreadable.push(e.to_string()),
    };
    if inputs.is_empty() {
        take(read_stdin());
    }
    for p in inputs {
        if p.as_os_str() == "-" {
            take(read_stdin());
        } else if p.is_dir() {
            let mut files = Vec::new();
            if let Err(e) = walk(p, &mut files) {
                take(Err(e));
            }
            files.sort();
            for f in files {
                take(read_file(&f));
            }
        } else {
            take(read_file(p));
        }
    }
    (out, unreadable)
}

fn read_stdin() -> Result<Source, PinError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|source| PinError::Read {
            path: "stdin".into(),
            source,
        })?;
    Ok(Source {
        name: "stdin".into(),
        path: None,
        text: text_of("stdin", bytes)?,
    })
}

fn read_file(p: &Path) -> Result<Source, PinError> {
    let name = p.display().to_string();
    let bytes = std::fs::read(p).map_err(|source| PinError::Read {
        path: name.clone(),
        source,
    })?;
    Ok(Source {
        text: text_of(&name, bytes)?,
        name,
        path: Some(p.to_path_buf()),
    })
}

fn text_of(name: &str, bytes: Vec<u8>) -> Result<String, PinError> {
    String::from_utf8(bytes).map_err(|e| PinError::NotUtf8 {
        path: name.to_string(),
        at: e.utf8_error().valid_up_to(),
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PinError> {
    let err = |source| PinError::Read {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type().map_err(err)?;
        if ft.is_dir() {
            if !name.starts_with('.') {
                walk(&path, out)?;
            }
        } else if (ft.is_file() || ft.is_symlink())
            && path.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes `text` to stdout.
pub fn write_stdout(text: &str) -> Result<(), PinError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .map_err(|source| PinError::Write {
            path: "stdout".into(),
            source,
        })
}

/// Writes via a temporary file in the same directory and a rename, keeping the permissions. A
/// symlink is followed: its target is rewritten, the link stays.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), PinError> {
    let err = |source| PinError::Write {
        path: path.display().to_string(),
        source,
    };
    let resolved = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(err(e)),
    };
    let path = resolved.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tagpin-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}
