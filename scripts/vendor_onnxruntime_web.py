"""Refresh the onnxruntime-web files that ``mobilesam serve`` and ``mobilesam export --format web`` ship.

    python scripts/vendor_onnxruntime_web.py 1.31.1

Runs ``npm pack onnxruntime-web@VERSION`` (npm checks the tarball against the registry's integrity
hash), and writes into ``src/mobilesam/server/static/ort/``:

- ``ort.wasm.bundle.min.mjs``: the WebAssembly-only ES module build (its Emscripten loader inside);
- ``ort-wasm-simd-threaded.wasm.gz``: the one WebAssembly binary that build loads (SIMD; threads where
  the page is cross-origin isolated), gzip-compressed reproducibly (level 9, no name, no time): the
  server sends it as it is with ``Content-Encoding: gzip`` (3.8 MB on the wire instead of 14.8 MB) and
  the web export writes it out decompressed;
- ``VERSION.json``: the package version, npm's integrity hash of the tarball and the SHA-256 of each file
  as it is in the tarball;
- ``LICENSE``: ONNX Runtime's MIT licence.

Only these are kept: the other builds (WebGPU, WebGL, JSPI, asyncify, source maps) are not used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "src" / "mobilesam" / "server" / "static" / "ort"
FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
LICENSE = """\
MIT License

Copyright (c) 2018 - present Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.

---
These files are onnxruntime-web (npm package, see VERSION.json), built by Microsoft from
https://github.com/microsoft/onnxruntime; its third-party notices:
https://github.com/microsoft/onnxruntime/blob/main/ThirdPartyNotices.txt
"""


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    version = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", f"onnxruntime-web@{version}", "--json"], cwd=tmp, check=True, capture_output=True, text=True
        )
        info = json.loads(out.stdout)[0]
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            data = {name: tar.extractfile(f"package/dist/{name}").read() for name in FILES}
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / FILES[0]).write_bytes(data[FILES[0]])
    # mtime=0 and no file name: the same input gives the same bytes (a reproducible commit).
    (DEST / (FILES[1] + ".gz")).write_bytes(gzip.compress(data[FILES[1]], compresslevel=9, mtime=0))
    meta = {
        "package": "onnxruntime-web",
        "version": info["version"],
        "npm_integrity": info["integrity"],
        "files": {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for name, b in data.items()},
    }
    (DEST / "VERSION.json").write_text(json.dumps(meta, indent=2) + "\n")
    (DEST / "LICENSE").write_text(LICENSE)
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
