//! From the keys a publish changed to the cheapest correct CloudFront invalidation.
//!
//! Every changed key becomes its URL path (`/` and the key, percent-encoded where CloudFront
//! needs it); an index document also stands for its directory (`/docs/` and `/docs`). Within
//! the site's budget the paths are sent as they are. Over it, the directories that save the
//! most paths become wildcards (`/docs/*`) until the budget is met, with at most
//! [`MAX_WILDCARDS`] of them; when even that cannot meet it, the whole site (`/*`) is
//! invalidated. CloudFront bills per path, and `/*` counts as one.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::config::Site;

/// CloudFront's limits on invalidations in progress, per distribution.
pub const MAX_FILE_PATHS_IN_PROGRESS: usize = 3000;
pub const MAX_WILDCARDS_IN_PROGRESS: usize = 15;
/// Wildcards one invalidation may use before the whole site is cheaper to reason about.
pub const MAX_WILDCARDS: usize = 5;
/// CloudFront's limit on one path.
pub const MAX_PATH_CHARS: usize = 4000;

/// What a browser sends percent-encoded in a path, so what the invalidation must name that
/// way: RFC 1738's unsafe characters except `~` (RFC 3986 made it unreserved, and browsers
/// send it as it is), and `?`, which would start a query. Non-ASCII is always encoded; `+`,
/// `&`, `=` and the like travel as they are. (`*` never reaches it: see [`plan`].)
const UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The paths of one invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub paths: Vec<String>,
}

impl Invalidation {
    pub fn whole_site() -> Self {
        Self { paths: vec!["/*".into()] }
    }

    pub fn wildcards(&self) -> usize {
        self.paths.iter().filter(|p| p.ends_with('*')).count()
    }

    /// A short digest of the paths: what a caller reference needs to name exactly these.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for path in &self.paths {
            hash.update(path.as_bytes());
            hash.update([0]);
        }
        hex::encode(&hash.finalize()[..8])
    }

    pub fn file_paths(&self) -> usize {
        self.paths.len() - self.wildcards()
    }

    /// Whether CloudFront takes it now, given what is in progress on the distribution; if
    /// not, it waits for a later run instead of failing.
    pub fn fits(&self, in_progress_files: usize, in_progress_wildcards: usize) -> bool {
        in_progress_files + self.file_paths() <= MAX_FILE_PATHS_IN_PROGRESS
            && in_progress_wildcards + self.wildcards() <= MAX_WILDCARDS_IN_PROGRESS
    }
}

/// The URL path of a key, as CloudFront matches it.
pub fn url_path(key: &str) -> String {
    format!("/{}", utf8_percent_encode(key, UNSAFE))
}

/// The invalidation for `keys` (object keys the publish changed or deleted); `None` when
/// none of them is served through the distribution.
pub fn plan(site: &Site, keys: &[String]) -> Option<Invalidation> {
    let mut paths = BTreeSet::new();
    for key in keys {
        // Keys outside the origin path are not served by this distribution.
        let Some(served) = key.strip_prefix(&site.origin_path) else { continue };
        // CloudFront takes `*` only as a wildcard at the end: a key with a star is covered
        // by the wildcard cut there.
        if let Some((before, _)) = served.split_once('*') {
            paths.insert(format!("{}*", url_path(before)));
            continue;
        }
        paths.insert(url_path(served));
        let (dir, file) = served.rsplit_once('/').map_or(("", served), |(dir, file)| (dir, file));
        if !site.index_document.is_empty() && file == site.index_document {
            if dir.is_empty() {
                paths.insert("/".into());
            } else {
                paths.insert(format!("{}/", url_path(dir)));
                paths.insert(url_path(dir));
            }
        }
    }
    if paths.is_empty() {
        return None;
    }
    if paths.iter().any(|p| p.len() > MAX_PATH_CHARS) {
        return Some(Invalidation::whole_site());
    }
    let planned = collapse(paths, site.invalidation_budget);
    // The paths are kept on the publish record beside its stale keys: a plan that would not
    // fit there beside them is the whole site.
    if planned.paths.iter().map(String::len).sum::<usize>() > MAX_PLANNED_PATH_BYTES {
        return Some(Invalidation::whole_site());
    }
    Some(planned)
}

/// The most bytes of paths a publish record keeps (its stale keys take at most
/// [`crate::domain::publish::MAX_RECORDED_KEY_BYTES`] beside them, within DynamoDB's 400 KB).
pub const MAX_PLANNED_PATH_BYTES: usize = 100 * 1024;

/// Replaces the directories that save the most paths by wildcards until `budget` is met.
fn collapse(mut paths: BTreeSet<String>, budget: usize) -> Invalidation {
    let mut wildcards = 0;
    while paths.len() > budget {
        if wildcards == MAX_WILDCARDS {
            return Invalidation::whole_site();
        }
        // Every directory (not the root) with the number of paths a wildcard on it replaces.
        let mut under: BTreeMap<String, usize> = BTreeMap::new();
        for path in &paths {
            let trimmed = path.trim_end_matches('*');
            let mut end = 0;
            while let Some(next) = trimmed[end + 1..].find('/') {
                end += 1 + next;
                let dir = &trimmed[..=end];
                // A wildcard on its own directory replaces nothing.
                if dir != trimmed || !path.ends_with('*') {
                    *under.entry(dir.to_owned()).or_default() += 1;
                }
            }
        }
        // The most paths saved; between equals, the deepest (it flushes the least).
        let best = under.into_iter().filter(|(_, n)| *n >= 2).max_by_key(|(dir, n)| (*n, dir.len()));
        let Some((dir, _)) = best else { return Invalidation::whole_site() };
        paths.retain(|p| !p.starts_with(&dir));
        paths.insert(format!("{dir}*"));
        wildcards += 1;
    }
    Invalidation { paths: paths.into_iter().collect() }
}

/// CloudFront's free invalidation paths per account and calendar month.
pub const FREE_PATHS_PER_MONTH: i64 = 1000;

/// What `cdn-invalidate` does next with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing the distribution serves is stale: done without an invalidation.
    NothingToInvalidate,
    /// Submit this invalidation.
    Submit(Invalidation),
    /// Over CloudFront's in-progress limits: wait for a later run.
    Wait(Invalidation),
    /// Ask CloudFront how the submitted invalidation is going; `overdue` when it has run
    /// longer than the site allows.
    Follow { id: String, overdue: bool },
    /// Nothing more to do.
    Done,
}

/// The invalidations of one distribution in progress, as Conveyor submitted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InProgress {
    pub files: usize,
    pub wildcards: usize,
}

impl InProgress {
    pub fn add(&mut self, paths: &[String]) {
        let wildcards = paths.iter().filter(|p| p.ends_with('*')).count();
        self.wildcards += wildcards;
        self.files += paths.len() - wildcards;
    }
}

/// The next step for `record` at `now`, given what is in progress on its distribution.
pub fn step(
    site: &Site,
    record: &crate::domain::publish::PublishRecord,
    in_progress: InProgress,
    alert_after: i64,
    now: i64,
) -> Step {
    use crate::domain::publish::PublishState;
    match record.state {
        PublishState::Uploaded => {
            let wanted =
                if record.whole_site { Some(Invalidation::whole_site()) } else { plan(site, &record.stale_keys) };
            // More wildcards than CloudFront ever takes at once (keys with stars): the whole site.
            let wanted = wanted.map(|i| if i.fits(0, 0) { i } else { Invalidation::whole_site() });
            match wanted {
                None => Step::NothingToInvalidate,
                Some(invalidation) if invalidation.fits(in_progress.files, in_progress.wildcards) => {
                    Step::Submit(invalidation)
                }
                Some(invalidation) => Step::Wait(invalidation),
            }
        }
        PublishState::Invalidating => match &record.invalidation_id {
            Some(id) => {
                Step::Follow { id: id.clone(), overdue: record.submitted_at.is_some_and(|at| now - at > alert_after) }
            }
            None => Step::Done,
        },
        _ => Step::Done,
    }
}

/// The calendar month (`2026-11`) of `at`, which CloudFront's free paths count by.
pub fn month_of(at: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", date.year(), u8::from(date.month()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(extra: &str) -> Site {
        Site::sample(extra)
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    fn paths(site: &Site, list: &[&str]) -> Vec<String> {
        plan(site, &keys(list)).map(|i| i.paths).unwrap_or_default()
    }

    #[test]
    fn unsafe_characters_are_encoded_and_the_rest_left_alone() {
        assert_eq!(url_path("a b.html"), "/a%20b.html");
        assert_eq!(url_path("notes#1.txt"), "/notes%231.txt");
        assert_eq!(url_path("what?.txt"), "/what%3F.txt");
        assert_eq!(url_path("100%.txt"), "/100%25.txt");
        assert_eq!(url_path("café/menü.html"), "/caf%C3%A9/men%C3%BC.html");
        assert_eq!(url_path("c++/a+b.txt"), "/c++/a+b.txt");
        assert_eq!(url_path("~user/a.txt"), "/~user/a.txt");
        assert_eq!(url_path("assets/app.3f2a.js"), "/assets/app.3f2a.js");
    }

    #[test]
    fn a_key_with_a_star_is_covered_by_a_wildcard_cut_there() {
        let site = site("");
        let invalidation = plan(&site, &keys(&["a b/star*.txt"])).unwrap();
        assert_eq!(invalidation.paths, ["/a%20b/star*"]);
        assert_eq!(invalidation.wildcards(), 1);
    }

    #[test]
    fn an_index_document_also_stands_for_its_directory() {
        let site = site("");
        assert_eq!(paths(&site, &["docs/index.html"]), ["/docs", "/docs/", "/docs/index.html"]);
        assert_eq!(paths(&site, &["index.html"]), ["/", "/index.html"]);
        let none = self::site("index_document = \"\"\n");
        assert_eq!(paths(&none, &["docs/index.html"]), ["/docs/index.html"]);
    }

    #[test]
    fn a_few_changes_are_invalidated_exactly() {
        let site = site("");
        assert_eq!(paths(&site, &["a.css", "b/c.js", "d e.txt"]), ["/a.css", "/b/c.js", "/d%20e.txt"]);
        assert_eq!(plan(&site, &[]), None);
    }

    #[test]
    fn many_changes_in_one_directory_become_its_wildcard() {
        let site = site("");
        let mut changed: Vec<String> = (0..30).map(|i| format!("assets/chunk-{i}.js")).collect();
        changed.push("index.html".into());
        let invalidation = plan(&site, &changed).unwrap();
        assert_eq!(invalidation.paths, ["/", "/assets/*", "/index.html"]);
        assert_eq!(invalidation.wildcards(), 1);
    }

    #[test]
    fn the_deepest_directory_that_saves_as_much_is_chosen() {
        let site = site("invalidation_budget = 3\n");
        let changed = keys(&["a/b/1.js", "a/b/2.js", "a/b/3.js", "x.html"]);
        assert_eq!(plan(&site, &changed).unwrap().paths, ["/a/b/*", "/x.html"]);
    }

    #[test]
    fn over_the_budget_with_no_directory_to_share_the_whole_site_goes() {
        let site = site("");
        let changed: Vec<String> = (0..11).map(|i| format!("page-{i}.html")).collect();
        assert_eq!(plan(&site, &changed).unwrap(), Invalidation::whole_site());
        let roomy = self::site("invalidation_budget = 20\n");
        assert_eq!(plan(&roomy, &changed).unwrap().paths.len(), 11);
    }

    #[test]
    fn keys_outside_the_origin_path_are_not_served_and_the_rest_lose_it() {
        let site = site("prefix = \"www/\"\norigin_path = \"www/\"\n");
        assert_eq!(paths(&site, &["www/a.html", "other/b.html"]), ["/a.html"]);
        assert_eq!(plan(&site, &keys(&["other/b.html"])), None);
    }

    #[test]
    fn in_progress_limits_make_a_batch_wait() {
        let one = Invalidation { paths: vec!["/a".into(), "/b/*".into()] };
        assert!(one.fits(0, 0));
        assert!(!one.fits(3000, 0), "3,000 file paths in progress at most");
        assert!(!one.fits(0, 15), "15 wildcards in progress at most");
        assert!(one.fits(2999, 14));
    }

    fn record(state: crate::domain::publish::PublishState, keys: &[&str]) -> crate::domain::publish::PublishRecord {
        let site = site("");
        let mut record = crate::domain::publish::PublishRecord::new(&site, "p1", &Default::default(), "test", 1_000);
        record.state = state;
        record.stale_keys = keys.iter().map(|k| k.to_string()).collect();
        record
    }

    #[test]
    fn an_uploaded_publish_is_submitted_when_it_fits_and_waits_when_it_does_not() {
        use crate::domain::publish::PublishState;
        let site = site("");
        let uploaded = record(PublishState::Uploaded, &["a.css", "b.css"]);
        let submit = step(&site, &uploaded, InProgress::default(), 900, 2_000);
        assert_eq!(submit, Step::Submit(Invalidation { paths: vec!["/a.css".into(), "/b.css".into()] }));
        let busy = InProgress { files: 2_999, wildcards: 0 };
        assert!(matches!(step(&site, &uploaded, busy, 900, 2_000), Step::Wait(_)), "3,000 file paths at most");
        let mut whole = record(PublishState::Uploaded, &[]);
        whole.whole_site = true;
        let wildcards = InProgress { files: 0, wildcards: 15 };
        assert!(matches!(step(&site, &whole, wildcards, 900, 2_000), Step::Wait(_)), "15 wildcards at most");
        let starry: Vec<String> = (0..16).map(|i| format!("d{i}/star*.txt")).collect();
        let starry = record(PublishState::Uploaded, &starry.iter().map(String::as_str).collect::<Vec<_>>());
        let roomy = self::site("invalidation_budget = 3000\n");
        assert_eq!(
            step(&roomy, &starry, InProgress::default(), 900, 2_000),
            Step::Submit(Invalidation::whole_site()),
            "16 wildcards never fit: the whole site instead of waiting forever"
        );
        let outside = self::site("origin_path = \"www/\"\nprefix = \"www/\"\n");
        let nothing = record(PublishState::Uploaded, &["other/a.css"]);
        assert_eq!(step(&outside, &nothing, InProgress::default(), 900, 2_000), Step::NothingToInvalidate);
    }

    #[test]
    fn a_submitted_invalidation_is_followed_and_overdue_after_the_allowed_time() {
        use crate::domain::publish::PublishState;
        let site = site("");
        let mut running = record(PublishState::Invalidating, &["a.css"]);
        running.invalidation_id = Some("I1".into());
        running.submitted_at = Some(1_000);
        assert_eq!(
            step(&site, &running, InProgress::default(), 900, 1_900),
            Step::Follow { id: "I1".into(), overdue: false }
        );
        assert_eq!(
            step(&site, &running, InProgress::default(), 900, 1_901),
            Step::Follow { id: "I1".into(), overdue: true }
        );
        let done = record(PublishState::Completed, &["a.css"]);
        assert_eq!(step(&site, &done, InProgress::default(), 900, 5_000), Step::Done);
        let mut counted = InProgress::default();
        counted.add(&["/a".into(), "/b/*".into()]);
        assert_eq!(counted, InProgress { files: 1, wildcards: 1 });
        assert_eq!(month_of(1_795_000_000), "2026-11");
    }

    #[test]
    fn paths_too_long_to_keep_beside_the_stale_keys_are_the_whole_site() {
        let site = site("invalidation_budget = 3000\n");
        let keys: Vec<String> = (0..2000).map(|i| format!("{}/{i}.html", "deep/".repeat(40))).collect();
        let planned = plan(&site, &keys).unwrap();
        assert_eq!(planned, Invalidation::whole_site(), "2000 paths of 200 bytes are more than a record keeps");
        let few: Vec<String> = (0..20).map(|i| format!("docs/{i}.html")).collect();
        assert_eq!(plan(&site, &few).unwrap().paths.len(), 20);
    }
}
