//! `ruby`'s artifact: CRuby 4.0 for wasm32-wasip1 with its standard library inside
//! (`dist/ruby+stdlib.wasm` of npm's `@ruby/4.0-wasm-wasi` 2.10.1, ruby.wasm), downloaded once
//! per machine from the npm registry by the host's Python and verified against the sha256 pins
//! here (the package's and the module's). Nothing unverified is ever compiled.

use std::path::{Path, PathBuf};

/// The package and version every `ruby` build is made from.
pub const PACKAGE: &str = "@ruby/4.0-wasm-wasi@2.10.1";
/// Where the registry serves the package.
pub const TARBALL_URL: &str =
    "https://registry.npmjs.org/@ruby/4.0-wasm-wasi/-/4.0-wasm-wasi-2.10.1.tgz";
/// sha256 of the package's tarball.
pub const TARBALL_SHA256: &str = "48ba7538badb10f829c13be0f79e109c7ed14a1d29f45a42a5d384eef18dc2ce";
/// sha256 of `ruby+stdlib.wasm`.
pub const MODULE_SHA256: &str = "9fe3c749730a16da9b0d1a973bb77bec164f8d958efcb7f5b81e4275ea8c5439";

/// The verified module under `cache_dir`, fetched first if it is not there yet. Blocking:
/// seconds to download 33 MB the first time, a hash of 33 MB after.
pub fn ensure(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = cache_dir.join("ruby-4.0-wasm-wasi-2.10.1");
    let module = root.join("ruby+stdlib.wasm");
    let verified =
        |p: &Path| crate::runtime::sci::artifact::sha256_file(p).is_ok_and(|s| s == MODULE_SHA256);
    if verified(&module) {
        return Ok(module);
    }
    std::fs::create_dir_all(cache_dir)?;
    let _lock = crate::runtime::artifact::FileLock::acquire(&root.with_extension("lock"))?;
    if verified(&module) {
        return Ok(module);
    }
    tracing::info!(
        target: crate::runtime::artifact::PROGRESS_TARGET,
        package = PACKAGE,
        "fetching {PACKAGE} for ruby (once; 33 MB)"
    );
    let staging = tempfile::tempdir_in(cache_dir)?;
    let unpacked = staging.path().join("unpacked");
    std::fs::create_dir_all(&unpacked)?;
    crate::runtime::artifact::run_python(
        &["-c", FETCH],
        &[
            TARBALL_URL.as_ref(),
            TARBALL_SHA256.as_ref(),
            unpacked.join("ruby+stdlib.wasm").as_os_str(),
        ],
        &format!("fetch {PACKAGE}"),
    )?;
    if !verified(&unpacked.join("ruby+stdlib.wasm")) {
        anyhow::bail!(
            "{PACKAGE}'s ruby+stdlib.wasm does not match its pinned sha256 {MODULE_SHA256}"
        );
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::rename(&unpacked, &root)?;
    Ok(module)
}

/// Downloads `argv[1]`, checks its sha256 against `argv[2]`, and copies the module out of it to
/// `argv[3]`.
const FETCH: &str = r#"
import hashlib, io, sys, tarfile, urllib.request
url, want, out = sys.argv[1], sys.argv[2], sys.argv[3]
with urllib.request.urlopen(url, timeout=120) as r:
    data = r.read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit("the package has sha256 %s, pinned %s" % (got, want))
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    member = t.extractfile("package/dist/ruby+stdlib.wasm")
    with open(out, "wb") as f:
        f.write(member.read())
"#;
