"""The driftd image: its size, what its layers hold, and the time from ``docker run`` to ``/readyz``.

Usage::

    bash scripts/image-build.sh && .venv/bin/python bench/bench_image.py     # -> bench/results/image.{json,md}

Measured on the image ``scripts/image-build.sh`` tags (``driftd:<version>``): its size, the size of
the base it was built on and of each layer ``docker history`` lists; whether the final stage holds a
compiler, pip, a pip cache or test suites (it must not); and, median of ``--repeat`` runs, the time from
``docker run`` (the chart's securityContext: read-only root, all capabilities dropped but four, network
``none``) to ``/readyz`` answering 200 from inside the container, with one in-sync host file and no
container to govern.  The probe polls every 50 ms through ``docker exec``, which itself costs ~0.1 s:
the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PROBE = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9808/readyz', timeout=2)"
FORBIDDEN = ("/usr/bin/gcc", "/usr/bin/cc", "/opt/driftd/lib/python3.11/site-packages/pip", "/root/.cache/pip",
             "/src", "/wheels", "/opt/build")


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=300, check=False)
    if check and r.returncode:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def startup(image: str, root: Path) -> float:
    name = f"driftd-bench-{time.time_ns()}"
    t0 = time.monotonic()
    sh("docker", "run", "-d", "--name", name, "--network", "none", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
       *[x for c in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID") for x in ("--cap-add", c)],
       "--security-opt", "no-new-privileges", "-v", f"{root / 'host'}:/host", "-v", f"{root / 'baselines'}:/etc/driftd/baselines:ro",
       "--tmpfs", "/var/lib/driftd", "-e", "DRIFTD_HTTP__ADDRESS=127.0.0.1:9808", "--label", "driftd-test=1", image)
    try:
        while time.monotonic() - t0 < 60:
            if subprocess.run(["docker", "exec", name, "python3", "-c", PROBE], capture_output=True).returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise SystemExit(f"{name}: /readyz never answered:\n{sh('docker', 'logs', name, check=False)}")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=f"driftd:{VERSION}")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    info = json.loads(sh("docker", "image", "inspect", args.image))[0]
    history = [ln.split("\t", 2) for ln in sh("docker", "history", "--no-trunc", "--format",
                                             "{{.Size}}\t{{.CreatedBy}}\t{{.ID}}", args.image).splitlines()]
    labels = info["Config"].get("Labels") or {}
    found = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", args.image, "-c",
               "import os, sys; print('\\n'.join(p for p in sys.argv[1:] if os.path.exists(p)))", *FORBIDDEN).split()
    tests = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", args.image, "-c",
               "import os; print(sum(1 for d, s, f in os.walk('/opt/driftd') if os.path.basename(d) in ('tests', 'test')))")
    site = "/opt/driftd/lib/python3.11/site-packages"
    sizes = dict(ln.split("\t")[::-1] for ln in sh(
        "docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", args.image, "-c",
        f"for p in /opt/driftd {site}/kubernetes {site}/cryptography {site}/pygments /usr/lib/python3.11; do du -sm $p; done",
    ).splitlines())
    with tempfile.TemporaryDirectory(prefix="driftd-image-bench-") as d:
        root = Path(d)
        (root / "host/etc").mkdir(parents=True)
        (root / "host/etc/motd").write_text("Authorized use only.\n")
        (root / "host/etc/motd").chmod(0o644)
        (root / "baselines").mkdir()
        (root / "baselines/motd.yaml").write_text(
            "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: motd}\nspec:\n  files:\n"
            "    - {path: /etc/motd, content: \"Authorized use only.\\n\", mode: \"0644\"}\n")
        startup(args.image, root)  # first run: page cache warm, not counted
        samples = [startup(args.image, root) for _ in range(args.repeat)]
    result = {
        "image": args.image, "size_bytes": info["Size"], "size_mb": round(info["Size"] / 1e6, 1),
        "labels": {k: v for k, v in labels.items() if k.startswith("org.opencontainers")},
        "layers": [{"size": h[0], "created_by": h[1][:160]} for h in history],
        "mb_of": {k: int(v) for k, v in sizes.items()},
        "forbidden_paths_present": found, "test_dirs_in_venv": int(tests.strip() or 0),
        "startup_to_readyz_s": {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
                                "max": round(max(samples), 3), "samples": [round(s, 3) for s in samples]},
    }
    out = REPO / "bench/results"
    (out / "image.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# driftd image ({args.image})", "",
          f"- size: **{result['size_mb']} MB** (target: under 150 MB)",
          f"- `docker run` → `/readyz` 200: median **{result['startup_to_readyz_s']['median']} s** "
          f"(min {result['startup_to_readyz_s']['min']}, max {result['startup_to_readyz_s']['max']}, "
          f"{args.repeat} runs; read-only root, 4 capabilities, network none; an upper bound: polled by `docker exec`)",
          "- where it goes (MB): " + ", ".join(f"`{k}` {v}" for k, v in result["mb_of"].items())
          + "; the rest is the base (libc, OpenSSL, coreutils, dpkg)",
          f"- compilers, pip, pip caches, build trees in the final stage: {found or 'none'}; test suites in the venv: "
          f"{result['test_dirs_in_venv']}",
          "- labels: " + ", ".join(f"{k.rsplit('.', 1)[1]}={v}" for k, v in result["labels"].items()), "",
          "| layer size | created by |", "|---|---|"]
    md += [f"| {h['size']} | `{h['created_by'][:110].replace('|', '/')}` |" for h in result["layers"]]
    (out / "image.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:6]))
    return 1 if found or result["test_dirs_in_venv"] or info["Size"] >= 150e6 else 0


if __name__ == "__main__":
    sys.exit(main())
