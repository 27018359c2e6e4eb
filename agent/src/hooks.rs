//! A release's own hooks, read from `conveyor-hooks.toml` at the root of its artifact:
//!
//! ```toml
//! [before_install]          # runs in the unpacked release, before `current` switches
//! command = "./bin/migrate --check"
//! timeout = 60              # seconds (default 60)
//!
//! [after_install]           # still before the switch
//! [start]                   # after the switch, after the restart command
//! [validate]                # last: a failure here fails the instance
//! ```
//!
//! Each hook runs with `sh -c` in the release directory, with `CONVEYOR_RELEASE_DIR` and
//! `CONVEYOR_VERSION` set; a hook that outlives its timeout is killed.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub const FILE: &str = "conveyor-hooks.toml";
const DEFAULT_TIMEOUT: u64 = 60;
/// How much output a report carries.
pub const TAIL_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    BeforeInstall,
    AfterInstall,
    Start,
    Validate,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::BeforeInstall => "before_install",
            Stage::AfterInstall => "after_install",
            Stage::Start => "start",
            Stage::Validate => "validate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub command: String,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub before_install: Option<Hook>,
    pub after_install: Option<Hook>,
    pub start: Option<Hook>,
    pub validate: Option<Hook>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("{FILE} is not valid: {0}")]
    Invalid(String),
    #[error("hook {stage} exited with {status}: {tail}")]
    Failed { stage: &'static str, status: String, tail: String },
    #[error("hook {stage} did not finish within {timeout} s and was killed: {tail}")]
    TimedOut { stage: &'static str, timeout: u64, tail: String },
    #[error("hook {stage} could not start: {0}", stage = .1)]
    Spawn(String, &'static str),
}

impl Hooks {
    /// The hooks of the release in `dir`; none when it ships no hook file.
    pub fn load(dir: &Path) -> Result<Self, HookError> {
        match std::fs::read_to_string(dir.join(FILE)) {
            Ok(text) => toml::from_str(&text).map_err(|e| HookError::Invalid(e.to_string())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(HookError::Invalid(err.to_string())),
        }
    }

    pub fn get(&self, stage: Stage) -> Option<&Hook> {
        match stage {
            Stage::BeforeInstall => self.before_install.as_ref(),
            Stage::AfterInstall => self.after_install.as_ref(),
            Stage::Start => self.start.as_ref(),
            Stage::Validate => self.validate.as_ref(),
        }
    }

    /// Runs the hook of `stage`, if any. Answers the tail of its output.
    pub async fn run(&self, stage: Stage, dir: &Path, version: &str) -> Result<String, HookError> {
        let Some(hook) = self.get(stage) else { return Ok(String::new()) };
        run_command(stage.name(), &hook.command, hook.timeout, dir, version).await
    }
}

/// A name for a command in errors, as a stage has one.
struct Label(&'static str);

impl Label {
    fn name(&self) -> &'static str {
        self.0
    }
}

/// Runs `command` with `sh -c` in `dir` in a process group of its own, killed whole when it
/// outlives `timeout` seconds. Answers the tail of its output. `label` names it in errors.
pub async fn run_command(
    label: &'static str,
    command: &str,
    timeout: u64,
    dir: &Path,
    version: &str,
) -> Result<String, HookError> {
    {
        let stage = Label(label);
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir)
            .env("CONVEYOR_RELEASE_DIR", dir)
            .env("CONVEYOR_VERSION", version)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a timeout kills whatever the hook started too.
            .process_group(0)
            .spawn()
            .map_err(|e| HookError::Spawn(e.to_string(), stage.name()))?;
        let group = child.id();
        match tokio::time::timeout(Duration::from_secs(timeout), child.wait_with_output()).await {
            Err(_) => {
                if let Some(group) = group.and_then(|id| i32::try_from(id).ok()).filter(|&id| id > 1) {
                    // killpg, not `kill -KILL -<pgid>`: some kill(1) builds read a negative
                    // pid as -1, which would signal every process the agent may signal.
                    // SAFETY: killpg only sends a signal; `group` is the hook's own group.
                    unsafe {
                        libc::killpg(group, libc::SIGKILL);
                    }
                }
                Err(HookError::TimedOut { stage: stage.name(), timeout, tail: String::new() })
            }
            Ok(Err(err)) => Err(HookError::Spawn(err.to_string(), stage.name())),
            Ok(Ok(output)) => {
                let mut combined = output.stdout;
                combined.extend_from_slice(&output.stderr);
                let tail = tail(&combined);
                if output.status.success() {
                    Ok(tail)
                } else {
                    Err(HookError::Failed { stage: stage.name(), status: output.status.to_string(), tail })
                }
            }
        }
    }
}

/// The last [`TAIL_BYTES`] of `output`, as text.
pub fn tail(output: &[u8]) -> String {
    let start = output.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&output[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(hooks: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), hooks).unwrap();
        dir
    }

    #[tokio::test]
    async fn hooks_run_in_the_release_with_its_version() {
        let dir = release("[validate]\ncommand = \"echo checking $CONVEYOR_VERSION in $(basename $PWD)\"\n");
        let hooks = Hooks::load(dir.path()).unwrap();
        let tail = hooks.run(Stage::Validate, dir.path(), "v7").await.unwrap();
        let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(tail, format!("checking v7 in {name}"));
        assert_eq!(hooks.run(Stage::Start, dir.path(), "v7").await.unwrap(), "", "no hook: nothing runs");
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_output() {
        let dir = release("[before_install]\ncommand = \"echo migration failed >&2; exit 3\"\n");
        let err = Hooks::load(dir.path()).unwrap().run(Stage::BeforeInstall, dir.path(), "v1").await.unwrap_err();
        let HookError::Failed { stage, tail, .. } = &err else { panic!("{err}") };
        assert_eq!((*stage, tail.as_str()), ("before_install", "migration failed"));
    }

    #[tokio::test]
    async fn a_slow_hook_is_killed_with_what_it_started_and_nothing_else() {
        let dir = release("[start]\ncommand = \"sleep 30 & echo $! > bg.pid; sleep 30; echo never\"\ntimeout = 1\n");
        let mut bystander = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let started = std::time::Instant::now();
        let err = Hooks::load(dir.path()).unwrap().run(Stage::Start, dir.path(), "v1").await.unwrap_err();
        assert!(matches!(err, HookError::TimedOut { timeout: 1, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let background = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
        // Alive: listed and not a zombie waiting for its (new) parent to reap it.
        let alive = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        };
        for _ in 0..50 {
            if !alive(background.trim()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(background.trim()), "the hook's background process was killed too");
        assert!(bystander.try_wait().unwrap().is_none(), "a process outside the hook's group lives on");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    #[test]
    fn no_file_means_no_hooks_and_a_bad_file_is_an_error() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Hooks::load(empty.path()).unwrap(), Hooks::default());
        let bad = release("[deploy]\ncommand = \"x\"\n");
        assert!(matches!(Hooks::load(bad.path()), Err(HookError::Invalid(_))));
    }

    #[test]
    fn tails_keep_the_end() {
        let long = vec![b'x'; TAIL_BYTES + 10];
        assert_eq!(tail(&long).len(), TAIL_BYTES);
    }
}
