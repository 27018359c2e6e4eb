//! The documentation against the repository: what it shows must be what the code and the
//! tests use.

use std::path::PathBuf;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Each operator policy is shown in the README exactly as the file the tests run the
/// command with, so what a user copies is what was tested.
#[test]
fn the_readme_shows_every_operator_policy_verbatim() {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let mut policies: Vec<PathBuf> = std::fs::read_dir(repository().join("infra/policies"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    policies.sort();
    assert!(policies.len() >= 5, "publish, artifact push, wait, token and status each have one: {policies:?}");
    for path in policies {
        let text = std::fs::read_to_string(&path).unwrap();
        let document: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(document["Version"], "2012-10-17", "{}", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(readme.contains(&format!("`infra/policies/{name}`")), "the README names {name}");
        assert!(readme.contains(&format!("```json\n{text}```")), "the README shows {name} as it is in the file");
    }
}
