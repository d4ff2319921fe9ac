//! Hostile input for every parser that reads outside input: property tests (proptest) that
//! mutate a kept seed corpus (`tests/corpus/<target>/`, real files) and throw arbitrary text at
//! each parser. Every case must end in `Ok` or a clear error — no panic — and stay within an
//! allocation bound (a per-thread counting allocator): at most 64 bytes per input byte + 4 MiB.
//!
//! CI runs 256 cases per target (proptest's default). A longer, still bounded run:
//! `PROPTEST_CASES=20000 cargo test --release --test it fuzz::` (18 targets, 3.4 s here once the
//! release build exists; README says the same).
//! Failing cases are kept by proptest in `tests/proptest-regressions/` and replayed first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use proptest::prelude::*;

/// Counts live and peak bytes allocated by the current thread while `TRACK` is on.
struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; the bookkeeping only touches const-
// initialised thread-locals (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        note(new as isize - layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

fn note(delta: isize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                let v = (l.get() as isize + delta).max(0) as usize;
                l.set(v);
                v
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` on `input`, returning the peak bytes it held at once.
fn peak_of(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    f();
    TRACK.with(|t| t.set(false));
    PEAK.with(Cell::get)
}

fn bounded(input_len: usize, f: impl FnOnce()) {
    let peak = peak_of(f);
    let limit = 64 * input_len + 4 * 1024 * 1024;
    assert!(
        peak <= limit,
        "allocated {peak} bytes for {input_len} bytes of input (limit {limit})"
    );
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).expect("corpus file");
        // Line-oriented corpora: one seed per line.
        if f.extension().is_some_and(|e| e == "txt") && target != "checksums" {
            out.extend(
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec),
            );
        } else {
            out.push(bytes);
        }
    }
    assert!(!out.is_empty(), "empty corpus {target}");
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Delete(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..256).prop_map(|(p, n)| Edit::Duplicate(p, n)),
    ]
}

fn mutate(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Flip(p, x) => {
                if !b.is_empty() {
                    let i = p % b.len();
                    b[i] ^= x | 1;
                }
            }
            Edit::Insert(p, bytes) => {
                let i = p % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(p, n) => {
                let i = p % len;
                let end = (i + n).min(b.len());
                if i < end {
                    b.drain(i..end);
                }
            }
            Edit::Truncate(p) => b.truncate(p % len),
            Edit::Duplicate(p, n) => {
                let i = p % len;
                let end = (i + n).min(b.len());
                if i < end {
                    let chunk = b[i..end].to_vec();
                    b.splice(end..end, chunk);
                }
            }
        }
    }
    b
}

/// A seed from the corpus with a few edits, or arbitrary bytes.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    prop_oneof![
        4 => (0..n, prop::collection::vec(edit(), 0..6))
            .prop_map(move |(i, edits)| mutate(seeds[i].clone(), &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An error must say something.
fn clear<E: std::fmt::Display>(r: Result<impl Sized, E>) {
    if let Err(e) = r {
        assert!(!e.to_string().trim().is_empty(), "an empty error message");
    }
}

proptest! {
    #[test]
    fn config_yaml(b in input("config")) {
        let t = text(&b);
        bounded(b.len(), || clear(headwarden::settings::parse(Path::new("/nonexistent/fuzz.yaml"), &t)));
    }

    #[test]
    fn github_release_json(b in input("releases")) {
        let t = text(&b);
        bounded(b.len(), || clear(headwarden::release::feed::parse_releases(&t)));
    }

    #[test]
    fn checksums_txt(b in input("checksums"), name in "[a-z0-9_.]{1,40}") {
        let t = text(&b);
        bounded(b.len(), || {
            clear(headwarden::verify::checksum_for(&t, &name));
            clear(headwarden::verify::checksum_for(&t, "headscale_0.28.0_linux_amd64"));
        });
    }

    #[test]
    fn minisign_signatures_and_keys(b in input("minisig"), k in input("pubkey")) {
        let (t, kt) = (text(&b), text(&k));
        bounded(b.len() + k.len(), || {
            clear(minisign_verify::Signature::decode(&t).map(|_| ()));
            let key_line = kt.lines().find(|l| l.starts_with("RW")).unwrap_or(&kt).to_string();
            clear(minisign_verify::PublicKey::from_base64(&key_line).map(|_| ()));
            clear(minisign_verify::PublicKey::decode(&kt).map(|_| ()));
        });
    }

    #[test]
    fn headscale_rest_nodes(b in input("nodes")) {
        bounded(b.len(), || clear(headwarden::headscale::api::parse_node_list(&b)));
    }

    #[test]
    fn headscale_config(b in input("headscale_config")) {
        let t = text(&b);
        bounded(b.len(), || {
            clear(headwarden::headscale::config::HeadscaleConfig::parse(Path::new("/etc/headscale/config.yaml"), &t));
        });
    }

    #[test]
    fn durations(b in input("duration")) {
        let t = text(&b);
        bounded(b.len(), || clear(headwarden::settings::parse_duration(&t)));
    }

    #[test]
    fn cron_expressions(b in input("cron")) {
        let t = text(&b);
        bounded(b.len(), || {
            use headwarden::settings::cron::{next_due, Cron, Zone};
            if let Ok(c) = Cron::parse(&t) {
                // A schedule that parses must also be evaluable (cron's iterator can spin on
                // impossible dates; one step is enough to prove it terminates).
                let zone = Zone::parse(Some("Europe/Berlin")).expect("a known zone");
                let _ = next_due(Some(&c), zone, Some(0), 10);
                let _ = next_due(Some(&c), Zone::Local, Some(0), 10);
            }
        });
    }

    #[test]
    fn notification_urls(b in input("notify_url")) {
        let t = text(&b);
        bounded(b.len(), || {
            if let Err(e) = headwarden::settings::notify_url::targets(&t, None) {
                let msg = format!("{e} {}", e.hint());
                assert!(!msg.trim().is_empty());
                // Errors never repeat the URL's secrets (the corpus marks them S3CR3T).
                assert!(!msg.contains("S3CR3T"), "{msg}");
            }
        });
    }

    #[test]
    fn policies(b in input("policy")) {
        let t = text(&b);
        bounded(b.len(), || {
            if let Ok(v) = headwarden::audit::policy::parse_hujson(&t) {
                let _ = headwarden::audit::policy::allow_all_rules(&v);
                let _ = headwarden::audit::policy::unused_names(&v);
                let _ = headwarden::audit::policy::allows(Some(&v), "group:dev", "tag:dev", 22);
            }
        });
    }

    #[test]
    fn release_notes(b in input("notes")) {
        let t = text(&b);
        bounded(b.len(), || { let _ = headwarden::release::notes::highlights(&t); });
    }

    #[test]
    fn headscale_version_output(b in input("version")) {
        let t = text(&b);
        bounded(b.len(), || { let _ = headwarden::headscale::parse_version_text(&t); });
    }

    #[test]
    fn playbooks(b in input("playbook")) {
        let t = text(&b);
        bounded(b.len(), || clear(headwarden::settings::playbook::check(&t)));
    }
}

/// The version parser reads every shape real `headscale version` prints (0.26's bare version,
/// 0.27+'s four lines, `-o json`) and nothing else.
#[test]
fn version_text_shapes() {
    for (file, want) in [
        ("v0.26.txt", "0.26.1"),
        ("v0.29.txt", "0.29.2"),
        ("v0.28.json", "0.28.0"),
    ] {
        let t = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/corpus/version")
                .join(file),
        )
        .expect("seed");
        let v = headwarden::headscale::parse_version_text(&t).map(|v| v.to_string());
        assert_eq!(v.as_deref(), Some(want), "{file}");
    }
    assert_eq!(
        headwarden::headscale::parse_version_text("not a version"),
        None
    );
}

/// YAML anchors and aliases can expand exponentially ("billion laughs"): refused, not expanded.
#[test]
fn yaml_alias_bombs_are_refused_without_blowing_up() {
    let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        y.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let config = format!("{y}state_dir: /tmp/x\n");
    bounded(config.len(), || {
        let r = headwarden::settings::parse(Path::new("/nonexistent/bomb.yaml"), &config);
        let e = r.expect_err("refused");
        assert!(e.to_string().contains("alias references"), "{e}");
    });
    let hs = format!("{y}server_url: https://x\n");
    bounded(hs.len(), || {
        let _ = headwarden::headscale::config::HeadscaleConfig::parse(Path::new("/x.yaml"), &hs);
    });
}

/// An input that must be refused, with a message.
fn refused<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => assert!(
            !e.to_string().trim().is_empty(),
            "{what}: an empty error message"
        ),
    }
}

/// Deep nesting must not overflow the stack, and is refused.
#[test]
fn deeply_nested_json_and_yaml_are_errors() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    refused(
        "releases",
        headwarden::release::feed::parse_releases(&deep_json),
    );
    refused(
        "node list",
        headwarden::headscale::api::parse_node_list(deep_json.as_bytes()),
    );
    refused(
        "policy",
        headwarden::audit::policy::parse_hujson(&deep_json),
    );
    let deep_yaml = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = headwarden::settings::parse(Path::new("/nonexistent/deep.yaml"), &deep_yaml)
        .expect_err("refused");
    assert!(e.to_string().contains("nested deeper"), "{e}");
    refused(
        "headscale config",
        headwarden::headscale::config::HeadscaleConfig::parse(Path::new("/x.yaml"), &deep_yaml),
    );
    refused(
        "playbook",
        headwarden::settings::playbook::check(&deep_yaml),
    );
}

/// The YAML guard's limits, exactly at the edge: 64 levels of flow nesting pass, 65 do not;
/// 1 MiB passes the size check, one byte more does not.
#[test]
fn yaml_guard_limits_at_the_edge() {
    let nested = |n: usize| format!("a: {}1{}\n", "[".repeat(n), "]".repeat(n));
    headwarden::settings::yaml_guard(&nested(64)).expect("64 levels are allowed");
    let e = headwarden::settings::yaml_guard(&nested(65)).expect_err("65 levels");
    assert!(e.to_string().contains("nested deeper than 64"), "{e}");
    let mib = 1024 * 1024;
    let big = |n: usize| format!("# {}\n", "x".repeat(n - 3));
    headwarden::settings::yaml_guard(&big(mib)).expect("1 MiB is allowed");
    let e = headwarden::settings::yaml_guard(&big(mib + 1)).expect_err("1 MiB + 1");
    assert!(e.to_string().contains("bytes is more than"), "{e}");
    let aliases = |n: usize| format!("a: &x 1\nb: [{}]\n", vec!["*x"; n].join(", "));
    headwarden::settings::yaml_guard(&aliases(64)).expect("64 aliases are allowed");
    let e = headwarden::settings::yaml_guard(&aliases(65)).expect_err("65 aliases");
    assert!(e.to_string().contains("alias references"), "{e}");
}

/// The token-echo bug the fuzzer found, kept as fixed inputs rather than an RNG seed (a seed
/// replays through the current strategy, so it drifts when the corpus changes).
#[test]
fn notification_url_errors_never_echo_the_token() {
    for input in [
        "https://hooks.slack.com",
        "//hooks.slack.com/services/T000/B000/S3CR3T\0\0\0\0\0\0\0\0\0\0\0\0ttps://hooks.slack.com/services/T000/B000/S3CR3T\0\0\0\0\0\0\0\0\0\0\0\0",
        "slack://T000/B000/S3CR3T\u{0}",
        "sl@ck://T000/B000/S3CR3T",
    ] {
        if let Err(e) = headwarden::settings::notify_url::targets(input, None) {
            let msg = e.to_string();
            assert!(!msg.trim().is_empty(), "{input:?}: empty error");
            assert!(!msg.contains("S3CR3T"), "{input:?}: {msg}");
        }
    }
}
