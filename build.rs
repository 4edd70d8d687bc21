//! Puts the official Socket.IO client bundle (from npm, pinned by package-lock.json) where the
//! server embeds it from, so that `/socket.io/socket.io.js` works like Node's server. The bundle
//! is never committed: a fresh clone gets it through `npm ci`, run here when it is missing or does
//! not match the lockfile. `BANTER_CLIENT_DIST` may point at a `dist/` folder instead (for builds
//! without npm, such as a container's build stage that copied it in).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files Node's Socket.IO server serves under `/socket.io/`.
const FILES: &[&str] = &[
    "socket.io.js",
    "socket.io.js.map",
    "socket.io.min.js",
    "socket.io.min.js.map",
    "socket.io.esm.min.js",
    "socket.io.esm.min.js.map",
    "socket.io.msgpack.min.js",
    "socket.io.msgpack.min.js.map",
];

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client");
    println!("cargo:rerun-if-env-changed=BANTER_CLIENT_DIST");
    println!("cargo:rerun-if-changed=package-lock.json");
    println!("cargo:rerun-if-changed=build.rs");

    let dist = match env::var_os("BANTER_CLIENT_DIST") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dist = root.join("node_modules/socket.io-client/dist");
            if !installed_matches_lock(&root) {
                npm_ci(&root);
            }
            dist
        }
    };

    fs::create_dir_all(&out).expect("create OUT_DIR/client");
    for file in FILES {
        let from = dist.join(file);
        println!("cargo:rerun-if-changed={}", from.display());
        if let Err(err) = fs::copy(&from, out.join(file)) {
            panic!(
                "cannot copy {}: {err}. Run `npm ci` in {} (Node.js 20+ and npm are needed to build Banter), or set BANTER_CLIENT_DIST",
                from.display(),
                root.display()
            );
        }
    }
    let version = read_version(&root.join("node_modules/socket.io-client/package.json"))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BANTER_CLIENT_VERSION={version}");
}

/// True when node_modules holds the socket.io-client version that package-lock.json pins.
fn installed_matches_lock(root: &Path) -> bool {
    let installed = read_version(&root.join("node_modules/socket.io-client/package.json"));
    let locked = fs::read_to_string(root.join("package-lock.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|lock| {
            lock["packages"]["node_modules/socket.io-client"]["version"]
                .as_str()
                .map(str::to_owned)
        });
    installed.is_some() && installed == locked
}

fn read_version(package_json: &Path) -> Option<String> {
    let text = fs::read_to_string(package_json).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["version"].as_str().map(str::to_owned)
}

fn npm_ci(root: &Path) {
    println!("cargo:warning=installing the Socket.IO client with `npm ci` (package-lock.json)");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(root)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`npm ci` failed ({s}) in {}", root.display()),
        Err(err) => panic!(
            "cannot run npm ({err}): Node.js 20+ with npm is needed to build Banter, or set BANTER_CLIENT_DIST"
        ),
    }
}
