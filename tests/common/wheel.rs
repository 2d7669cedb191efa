//! A pure-Python wheel for the tests of operator packages.

use std::process::Command;

/// A pure-Python wheel `greet-1.0-py3-none-any.whl` in `dir`, made with the host's Python.
pub fn greet_wheel(dir: &std::path::Path) -> String {
    let wheel = dir.join("greet-1.0-py3-none-any.whl");
    let made = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    z.writestr('greet/__init__.py', 'def hello(n):\\n    return \"hello, \" + n\\n')\n    z.writestr('greet/big.py', 'DATA = ' + repr(list(range(5000))) + '\\n')\n    z.writestr('greet-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: greet\\nVersion: 1.0\\n')\n    z.writestr('greet-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n",
        ])
        .arg(&wheel)
        .status()
        .expect("python3 runs");
    assert!(made.success());
    wheel.to_string_lossy().into_owned()
}
