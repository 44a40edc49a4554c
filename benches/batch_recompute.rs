//! Batch-layer benchmark: a full recompute of one 20M-event day for a view of
//! minute x event_type x page (count, sum, max, distinct), next to DuckDB
//! running the same aggregation over the same Parquet archive files, in the
//! same run, alternating.
//!
//! `cargo bench --workspace --bench batch_recompute` (env BENCH_EVENTS,
//! events per day, default 20,000,000; BENCH_DAYS, default 1; BENCH_ROUNDS,
//! default 3; BENCH_DIR, default `$CARGO_TARGET_DIR/bench-batch`). DuckDB
//! comes from PyPI (`infra/install` installs the pinned version; the script
//! says how if it is missing).
//!
//! 1. Writes the days once (kept in BENCH_DIR for later runs): `tally-gen`
//!    events, 4 partitions, hourly ingest epochs, each (epoch, partition) one
//!    archive file (format v2) written by the batch crate's own archive
//!    writer, and the cut past the last epoch.
//! 2. Each round runs, each in its own process so that memory is its own:
//!    `tally_batch::run_batch` with `full` for the view (this binary with
//!    `--tally-child`), DuckDB with the same de-duplication on
//!    (topic, partition, offset) (row by row only where files' offset ranges
//!    overlap), and DuckDB de-duplicating every row, in an order that
//!    rotates from round to round (use a multiple of the row count for
//!    BENCH_ROUNDS, so each process follows each other one equally often).
//!    Both write their result as Parquet. Wall time is measured by this
//!    process; peak RSS is the child's VmHWM, polled from /proc.
//! 3. Prints the medians, the ratio, and the group counts (a check that both
//!    computed the same groups).
//!
//! BENCH_BASELINE_BIN names another build of this benchmark (say, from before
//! an optimisation): its `tally` side runs in the same rounds as a fourth row.
//! BENCH_QUANTILES=1 adds a quantiles measure of `properties.duration` to the
//! view (DuckDB: `approx_quantile` of p50, p90 and p99 per group, a
//! t-digest's answers rather than a mergeable sketch).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_batch::archive_file::{self, ArchiveRows};
use tally_batch::promote::Promote;
use tally_batch::RunOptions;
use tally_core::config::{Config, Millis, StoreConfig};
use tally_core::event::Limits;
use tally_core::time::EpochGrid;
use tally_gen::{Generator, Shape};
use tally_store::cut::CutFile;
use tally_store::object as store;
use tally_store::paths;

/// The allocator the `tally` binary runs with (see `src/main.rs`), so that
/// the child measures what `tally batch` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VIEW: &str = "minute_type_page";
const PARTITIONS: i32 = 4;
const TOPIC: &str = "events";
/// A fixed UTC day, so that reruns write the same files.
const DAY_START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
[store]
url = "file://{}"
[[view]]
name = "{VIEW}"
dimensions = ["event_type", "properties.page"]
granularity = "1m"
measures = [
  {{ name = "events", agg = "count" }},
  {{ name = "duration", agg = "sum", field = "properties.duration" }},
  {{ name = "longest", agg = "max", field = "properties.duration" }},
  {{ name = "users", agg = "distinct", field = "user_id" }},{quantiles}
]
"#,
        dir.display(),
        quantiles = if quantiles() {
            "\n  { name = \"latency\", agg = \"quantiles\", field = \"properties.duration\" },"
        } else {
            ""
        }
    );
    Config::from_toml(&text).expect("benchmark config")
}

/// Whether the view has a quantiles measure too (BENCH_QUANTILES=1).
fn quantiles() -> bool {
    std::env::var("BENCH_QUANTILES").is_ok_and(|v| v == "1")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--tally-child") {
        tally_child(Path::new(&args[i + 1]));
        return;
    }
    let n: u64 = env_or("BENCH_EVENTS", 20_000_000);
    let days: u64 = env_or("BENCH_DAYS", 1);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("bench-batch")
        })
        .join(if days == 1 {
            format!("day-v2-{n}")
        } else {
            format!("days-v2-{days}x{n}")
        });
    ensure_dataset(&dir, n, days);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/batch_recompute_duckdb.py");
    let me = std::env::current_exe().expect("own path");
    // Optionally another build of this benchmark (say, before an
    // optimisation), whose `tally` side is measured in the same rounds.
    let baseline = std::env::var_os("BENCH_BASELINE_BIN").map(PathBuf::from);
    let mut rows: Vec<(&str, Process, Vec<Run>)> = vec![
        (
            "tally batch, full recompute",
            Process::Tally(me),
            Vec::new(),
        ),
        (
            "DuckDB, same de-duplication",
            Process::DuckDb("dedup"),
            Vec::new(),
        ),
        (
            "DuckDB, row-level de-duplication",
            Process::DuckDb("rowdedup"),
            Vec::new(),
        ),
    ];
    if let Some(b) = baseline {
        rows.push((
            "tally batch, baseline build (BENCH_BASELINE_BIN)",
            Process::Tally(b),
            Vec::new(),
        ));
    }
    // The processes in a rotating order: on this VM a process that starts
    // right after another one freed gigabytes spends seconds more in the
    // kernel faulting its memory in (BENCHMARKS.md), so no process may
    // always follow the same one.
    let n_rows = rows.len();
    for round in 0..rounds {
        for k in 0..n_rows {
            let (name, process, list) = &mut rows[(round + k) % n_rows];
            let mut cmd = match process {
                Process::Tally(bin) => {
                    // Each full recompute writes a new run of the view's
                    // snapshot and no collector runs here: without this,
                    // every round leaves about 85 MB behind (12 GB after a
                    // day of benchmarking, crowding the page cache the
                    // inputs are read from).
                    let _ = std::fs::remove_dir_all(dir.join(paths::view_dir(VIEW)));
                    let mut c = Command::new(bin);
                    c.arg("--tally-child").arg(&dir);
                    c
                }
                Process::DuckDb(mode) => {
                    let mut c = Command::new("python3");
                    c.arg(&script).arg(&dir).arg(*mode);
                    c
                }
            };
            let run = measure(&mut cmd);
            eprintln!(
                "round {round}: {name}: {:.2} s, peak RSS {:.0} MiB, cpu {:.1} s, groups {}",
                run.secs, run.rss_mib, run.cpu_secs, run.groups
            );
            list.push(run);
        }
    }
    println!(
        "\n{n} events per day, {days} day(s), {} files, {rounds} rounds",
        count_files(&dir)
    );
    println!("| process | wall s (median) | CPU s (median) | peak RSS MiB (median) | groups |");
    println!("|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (name, _, list) in &rows {
        let secs = median(list.iter().map(|r| r.secs).collect());
        let cpu = median(list.iter().map(|r| r.cpu_secs).collect());
        let rss = median(list.iter().map(|r| r.rss_mib).collect());
        medians.push(secs);
        println!(
            "| {name} | {secs:.2} | {cpu:.1} | {rss:.0} | {} |",
            list.last().map_or(0, |r| r.groups)
        );
    }
    println!(
        "\nwall-time ratio tally / DuckDB (same de-duplication) = {:.2}",
        medians[0] / medians[1]
    );
    if medians.len() > 3 {
        println!(
            "wall-time ratio tally / baseline build = {:.2}",
            medians[0] / medians[3]
        );
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
}

/// A process the benchmark runs in each round.
enum Process {
    /// A build of this benchmark, as `--tally-child`.
    Tally(PathBuf),
    /// The DuckDB script in one of its modes (`dedup`, `rowdedup`).
    DuckDb(&'static str),
}

/// One measured child run.
#[derive(Debug, Clone, Copy)]
struct Run {
    secs: f64,
    cpu_secs: f64,
    rss_mib: f64,
    groups: u64,
}

/// Run a child to completion, polling its peak RSS and CPU time. The child
/// prints `groups=N` on its last line.
fn measure(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let pid = child.id();
    let (mut rss, mut cpu) = (0.0f64, 0.0f64);
    loop {
        // Read before checking for exit: the last sample is the latest possible.
        let (c, r) = usage(pid);
        cpu = cpu.max(c);
        rss = rss.max(r);
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = start.elapsed().as_secs_f64();
    let status = child.wait().expect("wait");
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    assert!(status.success(), "{cmd:?} failed: {out}");
    let groups = out
        .lines()
        .filter_map(|l| l.strip_prefix("groups="))
        .next_back()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Run {
        secs,
        cpu_secs: cpu,
        rss_mib: rss,
        groups,
    }
}

/// (CPU seconds, peak RSS MiB) of a live process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm_kib / 1024.0) // USER_HZ is 100 on Linux
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn count_files(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            usize::from(p.extension().is_some_and(|x| x == "parquet"))
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join(paths::EVENTS_ROOT))
}

/// The child: one full recompute of the view, as `tally batch run --full` does
/// (with its paging: no transparent huge pages, as `src/alloc.rs` sets).
fn tally_child(dir: &Path) {
    // SAFETY: integer arguments only; changes this process's paging policy.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cfg = config(dir);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let summary = rt.block_on(async {
        let store = tally_store::open(&StoreConfig {
            url: format!("file://{}", dir.display()),
            ..StoreConfig::default()
        })
        .expect("store");
        tally_batch::run_batch(
            &cfg,
            store,
            RunOptions {
                full: true,
                views: Some(vec![VIEW.to_owned()]),
                ..RunOptions::default()
            },
        )
        .await
        .expect("batch run")
    });
    let groups: u64 = summary.views.iter().map(|v| v.rows_written).sum();
    eprintln!(
        "tally: {} files, {} rows read, {:.2} s in run_batch",
        summary.files_read, summary.rows_read, summary.seconds
    );
    println!("groups={groups}");
}

/// Write the day's archive files unless a complete set is already there.
fn ensure_dataset(dir: &Path, n: u64, days: u64) {
    let done = dir.join("_complete");
    if done.exists() {
        eprintln!("dataset: reusing {}", dir.display());
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("dataset: writing {n} events to {} (once)…", dir.display());
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = tally_store::open(&StoreConfig {
            url: format!("file://{}", dir.display()),
            ..StoreConfig::default()
        })
        .expect("store");
        let clock = EpochGrid::new(3_600_000);
        let limits = Limits::default();
        let promote = Promote::of(&config(dir));
        // The default traffic shape (5 event types, 200 pages with a skew,
        // 100,000 users, half RFC 3339 timestamps, a few malformed records),
        // without late events so that the day is one day.
        let shape = Shape {
            late_share: 0.0,
            max_jitter: Millis(30_000),
            ..Shape::default()
        };
        let mut gen = Generator::new(shape, 7).expect("shape");
        let hours = 24 * days;
        let per_hour = n * days / hours;
        let mut next_offset = vec![0i64; PARTITIONS as usize];
        let mut last_epoch = 0;
        for h in 0..hours {
            let count = if h == hours - 1 {
                n * days - per_hour * (hours - 1)
            } else {
                per_hour
            };
            let mut files: Vec<ArchiveRows> =
                next_offset.iter().map(|&o| ArchiveRows::new(o)).collect();
            for i in 0..count {
                // Kafka time spreads the hour evenly; the generator jitters the
                // event time around it.
                let ts = DAY_START_MS + (h * 3_600_000 + i * 3_600_000 / count) as i64 + 1;
                let p = (i % PARTITIONS as u64) as usize;
                let g = gen.next(ts);
                files[p].push(
                    TOPIC,
                    p as i32,
                    next_offset[p],
                    ts,
                    clock,
                    &limits,
                    &g.payload,
                );
                next_offset[p] += 1;
            }
            let epoch = clock.epoch_of(DAY_START_MS + (h * 3_600_000) as i64 + 1);
            last_epoch = epoch;
            for (p, mut rows) in files.into_iter().enumerate() {
                let path = paths::archive_file(epoch, TOPIC, p as i32, rows.first_offset);
                archive_file::write(store.clone(), &path, &mut rows, &promote)
                    .await
                    .expect("write archive file");
            }
            eprintln!(
                "  hour {h} written ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        store::put_json(
            store.as_ref(),
            paths::CUT,
            &CutFile::V1 {
                cut: last_epoch + 1,
                decided_ms: DAY_START_MS + days as i64 * 86_400_000,
            },
        )
        .await
        .expect("cut");
    });
    std::fs::write(&done, format!("{n}\n")).expect("marker");
    eprintln!(
        "dataset: written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
