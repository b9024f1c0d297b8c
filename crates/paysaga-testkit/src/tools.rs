//! Tools the tests run that are not Rust crates, installed by the tests themselves (as the
//! test support starts its own PostgreSQL), so that `cargo test --workspace` passes on a fresh
//! machine without running `deploy/check-tools.sh` first:
//!
//! - [`kubernetes_validate`]: the pinned `kubernetes-validate` (PyPI) in a Python virtual
//!   environment of its own under `$TMPDIR/paysaga-tools/` (created with `python3 -m venv`,
//!   filled with `pip`; reused by later runs, never touching the system's Python);
//! - [`systemd_analyze`]: from `PATH` or `/usr/bin`, else installed with `apt-get install
//!   systemd` when the tests run as root;
//! - [`promtool`]: from the pinned Debian package `prometheus`, unpacked (not installed) under
//!   `$TMPDIR/paysaga-tools/`;
//! - [`chromium`]: Debian's `chromium` and `chromedriver` (the operator console's browser
//!   tests), installed with `apt-get install chromium-driver` when missing and run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serialises installs within a test binary (a file lock does it across binaries).
static INSTALLING: Mutex<()> = Mutex::new(());

/// Where the tools go: `$TMPDIR/paysaga-tools`.
pub fn tools_dir() -> PathBuf {
    std::env::temp_dir().join("paysaga-tools")
}

/// Runs `f` holding the install locks.
fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tools_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let lock = std::fs::File::create(dir.join("lock")).unwrap_or_else(|e| panic!("lock file: {e}"));
    lock.lock().unwrap_or_else(|e| panic!("lock: {e}"));
    f()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed ({cmd:?}):\n{text}");
    text
}

/// The Python interpreter of a virtual environment holding `kubernetes-validate==version`
/// (and PyYAML, which it requires): run it as `python -m kubernetes_validate`. Installed on
/// first use into `$TMPDIR/paysaga-tools/kubernetes-validate-VERSION` (needs `python3` with
/// `venv`, and PyPI; on Debian without `venv`, `python3-venv` is installed when root).
pub fn kubernetes_validate(version: &str) -> PathBuf {
    let venv = tools_dir().join(format!("kubernetes-validate-{version}"));
    let python = venv.join("bin").join("python");
    let installed = |python: &Path| {
        Command::new(python)
            .args(["-m", "kubernetes_validate", "--version"])
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version)
            .unwrap_or(false)
    };
    if installed(&python) {
        return python;
    }
    locked(|| {
        if installed(&python) {
            return;
        }
        eprintln!(
            "paysaga-testkit: installing kubernetes-validate=={version} into {}",
            venv.display()
        );
        let _ = std::fs::remove_dir_all(&venv);
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .output();
        if !matches!(&made, Ok(o) if o.status.success()) {
            // Debian's python3 ships venv (ensurepip) separately.
            apt_install("python3-venv", "python3 -m venv");
            let _ = std::fs::remove_dir_all(&venv);
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv",
            );
        }
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(format!("kubernetes-validate=={version}"))
                .env("PIP_REQUIRE_VIRTUALENV", "1"),
            "pip install kubernetes-validate",
        );
    });
    assert!(
        installed(&python),
        "kubernetes-validate {version} is not runnable from {} after installing it",
        python.display()
    );
    python
}

/// `systemd-analyze`: from `PATH`, else `/usr/bin/systemd-analyze` or `/bin/systemd-analyze`,
/// else installed with `apt-get install systemd` when running as root. `Err` with the reason
/// when it is missing and cannot be installed (not root, or no apt-get).
pub fn systemd_analyze() -> Result<PathBuf, String> {
    fn find() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
            .map(|d| d.join("systemd-analyze"))
            .find(|p| p.is_file())
    }
    if let Some(found) = find() {
        return Ok(found);
    }
    if !crate::is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(
            "systemd-analyze is not installed, and installing it (apt-get install \
                    systemd) needs root and apt-get; install it, or run the tests as root"
                .to_string(),
        );
    }
    locked(|| {
        if find().is_none() {
            apt_install("systemd", "systemd-analyze");
        }
    });
    find().ok_or_else(|| "apt-get install systemd did not provide systemd-analyze".to_string())
}

/// `apt-get install -y PACKAGE` (after `apt-get update`), as root only.
fn apt_install(package: &str, for_what: &str) {
    assert!(
        crate::is_root() && Path::new("/usr/bin/apt-get").exists(),
        "{for_what} needs the Debian package {package}: install it (apt-get install {package}), \
         or run the tests as root so they install it"
    );
    eprintln!("paysaga-testkit: installing {package} (apt-get) for {for_what}");
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    );
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    );
}

/// `promtool` (checks Prometheus rule files) of the pinned Debian package
/// `prometheus=version` (e.g. `2.42.0+ds-5+deb12u1`): downloaded with `apt-get download` and
/// unpacked with `dpkg-deb -x` into `$TMPDIR/paysaga-tools/prometheus-VERSION/` (nothing is
/// installed on the system, no service starts; reused by later runs). The Prometheus release
/// tarballs on GitHub would do as well, but this machine reaches Debian's archive and not
/// GitHub. Needs `apt-get` with the package lists (`apt-get update` is run once if the
/// download fails and the tests run as root) and `dpkg-deb`.
pub fn promtool(version: &str) -> PathBuf {
    let dir = tools_dir().join(format!("prometheus-{version}"));
    let promtool = dir.join("usr").join("bin").join("promtool");
    let installed = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if installed(&promtool) {
        return promtool;
    }
    locked(|| {
        if installed(&promtool) {
            return;
        }
        eprintln!(
            "paysaga-testkit: fetching promtool (Debian package prometheus={version}) into {}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        let download = dir.join("download");
        std::fs::create_dir_all(&download)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", download.display()));
        let fetch = || {
            Command::new("apt-get")
                .args(["download", "-qq"])
                .arg(format!("prometheus={version}"))
                .current_dir(&download)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !fetch() {
            assert!(
                crate::is_root(),
                "apt-get download prometheus={version} failed: run `apt-get update` (as root), \
                 or run the tests as root so they do it"
            );
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            );
            run(
                Command::new("apt-get")
                    .args(["download", "-qq"])
                    .arg(format!("prometheus={version}"))
                    .current_dir(&download),
                "apt-get download prometheus",
            );
        }
        let deb = std::fs::read_dir(&download)
            .unwrap_or_else(|e| panic!("{}: {e}", download.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .unwrap_or_else(|| panic!("apt-get download left no .deb in {}", download.display()));
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
            "dpkg-deb -x prometheus",
        );
        let _ = std::fs::remove_dir_all(&download);
    });
    assert!(
        installed(&promtool),
        "promtool is not runnable from {} after unpacking prometheus={version}",
        promtool.display()
    );
    promtool
}

/// A headless browser for the operator console's tests: Debian's `chromium` and its
/// `chromedriver` (package `chromium-driver`), from `/usr/bin` or installed with `apt-get` when
/// the tests run as root. Returns `(chromium, chromedriver)`. Start Chromium through
/// [`CHROMIUM_ARGS`]: without them it waits on the network at start on a closed machine.
pub fn chromium() -> Result<(PathBuf, PathBuf), String> {
    let browser = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if runs(&browser) && runs(&driver) {
        return Ok((browser, driver));
    }
    if !crate::is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(
            "chromium and chromedriver are not installed, and installing them (apt-get \
                    install chromium chromium-driver) needs root and apt-get; install them, or \
                    run the tests as root"
                .to_string(),
        );
    }
    locked(|| {
        if !(runs(&browser) && runs(&driver)) {
            // chromium-driver depends on the chromium of its version: one install brings both.
            apt_install("chromium-driver", "the console's browser tests");
        }
    });
    if runs(&browser) && runs(&driver) {
        Ok((browser, driver))
    } else {
        Err("apt-get install chromium chromium-driver did not provide runnable /usr/bin/chromium and /usr/bin/chromedriver".to_string())
    }
}

/// The flags a headless Chromium needs in a test on a machine without network or display
/// (add a fresh `--user-data-dir`).
pub const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];
