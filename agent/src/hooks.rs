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
    /// Who the hooks run as (from the agent's configuration, not from the release).
    #[serde(skip)]
    pub run_as: Option<RunAs>,
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

    /// The same hooks, run as `user`.
    pub fn run_as(self, user: Option<RunAs>) -> Self {
        Self { run_as: user, ..self }
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
        run_command(stage.name(), &hook.command, hook.timeout, dir, version, self.run_as).await
    }
}

/// The user a command runs as (`run_as` in the agent's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Looks `name` up in the system's user database.
    pub fn lookup(name: &str) -> Result<Self, String> {
        let unknown = || format!("run_as: no user `{name}` on this machine");
        let c_name = std::ffi::CString::new(name).map_err(|_| unknown())?;
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory owned here that outlives the call; the
        // result is read only when `found` points at `entry`.
        let code =
            unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
        if code != 0 || found.is_null() {
            return Err(unknown());
        }
        Ok(Self { uid: entry.pw_uid, gid: entry.pw_gid })
    }
}

/// Both output streams of a command, of which only the end is kept: a command that prints
/// gigabytes costs a few kilobytes.
#[derive(Default)]
struct Tail(std::sync::Mutex<Vec<u8>>);

impl Tail {
    fn push(&self, bytes: &[u8]) {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(bytes);
            if kept.len() > 2 * TAIL_BYTES {
                let excess = kept.len() - TAIL_BYTES;
                kept.drain(..excess);
            }
        }
    }

    fn text(&self) -> String {
        self.0.lock().map(|kept| tail(&kept)).unwrap_or_default()
    }
}

/// Reads `stream` to its end into `into`, in the background.
fn drain(
    stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
    into: std::sync::Arc<Tail>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let Some(mut stream) = stream else { return };
        let mut buffer = [0u8; 8192];
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            into.push(&buffer[..read]);
        }
    })
}

/// How long output is still collected after a command exits: a background process it started
/// may keep the pipes open for as long as it runs, and is not waited for.
const OUTPUT_GRACE: Duration = Duration::from_millis(300);

/// Runs `command` with `sh -c` in `dir` (as `run_as` when set) in a process group of its own,
/// killed whole when it outlives `timeout` seconds. Answers the tail of its output. `label`
/// names it in errors.
pub async fn run_command(
    label: &'static str,
    command: &str,
    timeout: u64,
    dir: &Path,
    version: &str,
    run_as: Option<RunAs>,
) -> Result<String, HookError> {
    let mut builder = tokio::process::Command::new("sh");
    builder
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("CONVEYOR_RELEASE_DIR", dir)
        .env("CONVEYOR_VERSION", version)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that a timeout kills whatever the command started too.
        .process_group(0);
    if let Some(user) = run_as {
        builder.uid(user.uid).gid(user.gid);
    }
    let mut child = builder.spawn().map_err(|e| HookError::Spawn(e.to_string(), label))?;
    let output = std::sync::Arc::new(Tail::default());
    let readers = [drain(child.stdout.take(), output.clone()), drain(child.stderr.take(), output.clone())];
    let group = child.id();
    let status = match tokio::time::timeout(Duration::from_secs(timeout), child.wait()).await {
        Err(_) => {
            if let Some(group) = group.and_then(|id| i32::try_from(id).ok()).filter(|&id| id > 1) {
                // killpg, not `kill -KILL -<pgid>`: some kill(1) builds read a negative
                // pid as -1, which would signal every process the agent may signal.
                // SAFETY: killpg only sends a signal; `group` is the command's own group.
                unsafe {
                    libc::killpg(group, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            let _ = tokio::time::timeout(OUTPUT_GRACE, futures_all(readers)).await;
            return Err(HookError::TimedOut { stage: label, timeout, tail: output.text() });
        }
        Ok(Err(err)) => return Err(HookError::Spawn(err.to_string(), label)),
        Ok(Ok(status)) => status,
    };
    let _ = tokio::time::timeout(OUTPUT_GRACE, futures_all(readers)).await;
    let tail = output.text();
    if status.success() { Ok(tail) } else { Err(HookError::Failed { stage: label, status: status.to_string(), tail }) }
}

/// Waits for every reader (they end when no process holds their pipe any more).
async fn futures_all(readers: [tokio::task::JoinHandle<()>; 2]) {
    for reader in readers {
        let _ = reader.await;
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
    async fn a_hook_that_prints_a_lot_keeps_only_its_tail() {
        let dir = release("[validate]\ncommand = \"head -c 20000000 /dev/zero | tr '\\\\0' x; echo; echo done\"\n");
        let tail = Hooks::load(dir.path()).unwrap().run(Stage::Validate, dir.path(), "v1").await.unwrap();
        assert!(tail.len() <= TAIL_BYTES && tail.ends_with("done"), "{} bytes", tail.len());
    }

    #[tokio::test]
    async fn a_hook_that_starts_a_background_process_is_not_waited_for() {
        // The background process inherits the hook's stdout and keeps it open for 30 s.
        let dir = release("[start]\ncommand = \"sleep 30 & echo $! > bg.pid; echo started\"\ntimeout = 20\n");
        let started = std::time::Instant::now();
        let tail = Hooks::load(dir.path()).unwrap().run(Stage::Start, dir.path(), "v1").await.unwrap();
        assert_eq!(tail, "started");
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
        let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
        assert!(std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "it still runs");
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }

    #[tokio::test]
    async fn hooks_run_as_the_configured_user() {
        let nobody = RunAs::lookup("nobody").unwrap();
        assert!(RunAs::lookup("no-such-user-here").unwrap_err().contains("no user `no-such-user-here`"));
        let dir = release("[validate]\ncommand = \"id -u\"\n");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let hooks = Hooks::load(dir.path()).unwrap().run_as(Some(nobody));
        let result = hooks.run(Stage::Validate, dir.path(), "v1").await;
        // SAFETY: geteuid only reads the process's effective user id.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(result.unwrap(), nobody.uid.to_string());
        } else {
            assert!(matches!(result, Err(HookError::Spawn(..))), "only root may switch users: {result:?}");
        }
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
