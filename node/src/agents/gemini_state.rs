//! What Gemini CLI keeps about each folder it ran in, under `~/.gemini`, and forgetting it.
//!
//! Gemini CLI 0.61 records every new folder: `projects.json` maps its path to a short name,
//! `tmp/<name>/` and `history/<name>/` hold its chats and logs (each with a `.project_root`
//! file naming the path), and `trusted_hooks.json` lists the project hooks it accepted there.
//! A task's worktree is a new folder each time, so these would pile up; [`forget_folder`]
//! removes the entries of one folder once its worktree is gone.
//!
//! **Invariant**: only entries that name exactly that folder are touched; a file that does not
//! parse is left alone. The JSON files are rewritten atomically (a temporary file, then a
//! rename).

use std::fs;
use std::io;
use std::path::Path;

use serde_json::{Map, Value};

/// Removes what Gemini CLI keeps about `folder` from the `~/.gemini` directory `gemini_dir`.
/// Returns how many entries (JSON keys and directories) were removed.
pub fn forget_folder(gemini_dir: &Path, folder: &Path) -> io::Result<usize> {
    let key = folder.to_string_lossy();
    let mut removed = 0;
    let mut names = Vec::new();
    edit_json(&gemini_dir.join("projects.json"), |root| {
        let projects = root.get_mut("projects").and_then(Value::as_object_mut)?;
        let name = projects.remove(key.as_ref())?;
        names.extend(name.as_str().map(str::to_string));
        Some(())
    })
    .map(|changed| removed += usize::from(changed))?;
    edit_json(&gemini_dir.join("trusted_hooks.json"), |root| root.remove(key.as_ref()).map(drop))
        .map(|changed| removed += usize::from(changed))?;
    for name in names.iter().filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && *n != "..") {
        for area in ["tmp", "history"] {
            let dir = gemini_dir.join(area).join(name);
            let root = fs::read_to_string(dir.join(".project_root")).unwrap_or_default();
            if root.trim() == key {
                fs::remove_dir_all(&dir)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Applies `edit` to the JSON object in `path` and writes it back when `edit` says it changed
/// something (`Some`). A missing or unparsable file is left as it is. Returns whether it wrote.
fn edit_json(
    path: &Path,
    edit: impl FnOnce(&mut Map<String, Value>) -> Option<()>,
) -> io::Result<bool> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(false) };
    let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(&text) else {
        return Ok(false);
    };
    if edit(&mut root).is_none() {
        return Ok(false);
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(root)).map_err(io::Error::other)?;
    text.push('\n');
    crate::fs::write_atomic(path, text.as_bytes(), crate::fs::Mode::Keep)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn forgets_one_folder_and_keeps_the_others() {
        let home = tempfile::tempdir().unwrap();
        let gemini = home.path().join(".gemini");
        write(
            &gemini.join("projects.json"),
            r#"{"projects": {"/w/app-1": "app-1", "/src/app": "app"}}"#,
        );
        write(
            &gemini.join("trusted_hooks.json"),
            r#"{"/w/app-1": ["ccm:x"], "/src/app": ["mine:y"]}"#,
        );
        for (area, name, root) in [
            ("tmp", "app-1", "/w/app-1"),
            ("history", "app-1", "/w/app-1"),
            ("tmp", "app", "/src/app"),
        ] {
            write(&gemini.join(area).join(name).join(".project_root"), root);
        }

        assert_eq!(forget_folder(&gemini, Path::new("/w/app-1")).unwrap(), 4);
        let projects: Value =
            serde_json::from_str(&fs::read_to_string(gemini.join("projects.json")).unwrap())
                .unwrap();
        assert_eq!(projects, serde_json::json!({"projects": {"/src/app": "app"}}));
        let hooks: Value =
            serde_json::from_str(&fs::read_to_string(gemini.join("trusted_hooks.json")).unwrap())
                .unwrap();
        assert_eq!(hooks, serde_json::json!({"/src/app": ["mine:y"]}));
        assert!(!gemini.join("tmp/app-1").exists() && !gemini.join("history/app-1").exists());
        assert!(gemini.join("tmp/app").exists());

        // Again: nothing left to forget, nothing written.
        assert_eq!(forget_folder(&gemini, Path::new("/w/app-1")).unwrap(), 0);
    }

    #[test]
    fn a_directory_of_another_folder_with_the_same_name_is_kept() {
        let home = tempfile::tempdir().unwrap();
        let gemini = home.path().join(".gemini");
        write(&gemini.join("projects.json"), r#"{"projects": {"/w/app-1": "app-1"}}"#);
        write(&gemini.join("tmp/app-1/.project_root"), "/elsewhere/app-1");
        assert_eq!(forget_folder(&gemini, Path::new("/w/app-1")).unwrap(), 1);
        assert!(gemini.join("tmp/app-1").exists());
    }

    #[test]
    fn missing_or_unparsable_files_are_left_alone() {
        let home = tempfile::tempdir().unwrap();
        let gemini = home.path().join(".gemini");
        assert_eq!(forget_folder(&gemini, Path::new("/w/app-1")).unwrap(), 0);
        write(&gemini.join("projects.json"), "{not json");
        assert_eq!(forget_folder(&gemini, Path::new("/w/app-1")).unwrap(), 0);
        assert_eq!(fs::read_to_string(gemini.join("projects.json")).unwrap(), "{not json");
    }
}
