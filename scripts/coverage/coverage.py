#!/usr/bin/env python3
"""Coverage of TerraTorch's registries by terrahost, per registry and source.

Lists every name of TerraTorch's registries (BACKBONE_REGISTRY, NECK_REGISTRY,
DECODER_REGISTRY and FULL_MODEL_REGISTRY per source prefix, and MODEL_FACTORY_REGISTRY)
by importing terratorch in a Python that has it, lists terrahost's registries with
`terrahost list --json`, and classifies each TerraTorch name:

  built    terrahost's registry has the name under the same prefix (model factories:
           under any prefix, as TerraTorch's factory registry has none);
  refused  terrahost knows the name and says why it does not build it (the answer of
           `terrahost show REGISTRY PREFIX_NAME` is an error other than "not in ...");
  missing  terrahost answers that the name is not in its registry.

timm's backbone source is split in two rows: the names TerraTorch itself registers into
timm (found by diffing `timm.list_models()` before and after `import terratorch`) and
timm's own models (thousands; timm's breadth is outside terrahost's scope, the row only
says how many terrahost covers).

Run from the repository root (the defaults are relative to it):

    python3 scripts/coverage/coverage.py \
        --python .venv-ref/bin/python \          # a Python with terratorch installed
        --terrahost target/debug/terrahost \     # the light front (engine beside it)
        --plugin-dir target/plugins \            # optional; else terrahost's default
        --out scripts/coverage/coverage-1.2.13   # writes .md and .json
        [--names]                                # list the refused and missing names
        [--readme README.md]                     # replace the table between its markers
        [--build --build-timeout 300]            # also build each built entry

The script itself needs only the standard library; it runs the given Python as a child
(`coverage.py --dump-terratorch FILE`), which installs scripts/reference/mmcv_stand_in.py
before importing terratorch (mmcv-lite has no compiled ops). `--build` builds every
built entry with its defaults; required arguments are filled from a small table
(`BUILD_FILL`: `num_classes` 2, `channels` 32, `model_bands` three bands, ...),
decoders and necks get the channel lists and arguments of `BUILD_TRIES` in turn until
one builds (a failure reports the first try's error). Entries with
other required arguments and the model factories (which need a whole model config) are
reported as not tried; `--build-memory-gb` (default 8) caps each build's memory, and
what passes it is reported as "over memory". Set TERRAHOST_CACHE to keep terrahost's registry cache out of ~/.cache.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MULTI = [("backbone", "BACKBONE_REGISTRY"), ("neck", "NECK_REGISTRY"),
         ("decoder", "DECODER_REGISTRY"), ("full_model", "FULL_MODEL_REGISTRY")]
FACTORY = ("model_factory", "MODEL_FACTORY_REGISTRY")
TIMM_OWN = "timm (timm's own models)"
TIMM_TT = "timm (registered by TerraTorch)"
NO_PREFIX = "(no prefix)"
# (channel list, extra arguments) tried in turn for decoders and necks until one builds: a
# pyramid, smp's depth-5 one, one map, then mmseg's multi-map heads (an extra argument set
# is tried only where the entry declares all its keys)
BUILD_TRIES = [
    ("64,128,256,512", {}), ("32,64,128,256,512,1024", {}), ("256", {}),
    ("64,128,256,512", {"in_index": [0, 1, 2, 3]}),
    ("64,128,256,512", {"input_transform": "multiple_select", "in_index": [0, 1, 2, 3]}),
    ("64,128", {"in_index": [0, 1]}),
    ("64,128,256", {"input_transform": "multiple_select", "in_index": [0, 1, 2]}),
    ("768,768,768,768", {"input_transform": "multiple_select", "in_index": [0, 1, 2, 3]}),
    ("64,128,256,512", {"in_index": [0, 1, 2, 3], "channels": 512}),
]
# values for required arguments, by name or by (name, type); any other required argument
# leaves the entry "not tried"
BUILD_FILL = {
    "num_classes": 2, ("channels", "int"): 32, ("channels", "list[int]"): [256, 128, 64, 32],
    "model_bands": ["RED", "GREEN", "BLUE"], "indices": [0, 1, 2, 3], "new_order": [0, 2, 3, 1],
    "in_channels": 256, "upsampling_size": 4, "out_channels": 2, "num_heads": 2, "mlp_ratio": 4.0,
    "patch_size": 16, "depth": 1, "in_chans": 3, "num_layers": 1, "embed_dims": 64,
    "feature_strides": [4, 8, 16, 32], "pam_channels": 16, "c1_in_channels": 64, "c1_channels": 16,
    "project_channels": 16, "ocr_channels": 16, "isa_channels": 16, "ema_channels": 16,
    "num_bases": 8, "num_stages": 1,
}


# --------------------------------------------------------------------------- TerraTorch side
def dump_terratorch(out: str) -> None:
    """Runs inside the TerraTorch Python: writes its registries' names as JSON."""
    import importlib.metadata as md
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(REPO / "scripts" / "reference"))
    from mmcv_stand_in import install_stand_ins  # before terratorch imports mmseg

    install_stand_ins()
    import timm

    timm_before = set(timm.list_models())
    import terratorch  # noqa: F401  (registers everything)
    from terratorch import registry as R

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    res = {
        "versions": {p: version(p) for p in
                     ["terratorch", "timm", "segmentation-models-pytorch", "mmsegmentation", "torch"]},
        "terratorch_imported_from": str(Path(terratorch.__file__).parent),
        "registries": {},
    }
    for reg_name, attr in MULTI:
        reg = getattr(R, attr)
        res["registries"][reg_name] = {p: list(reg[p]) for p in reg.keys()}
    res["registries"][FACTORY[0]] = {NO_PREFIX: list(getattr(R, FACTORY[1]))}
    timm_after = list(timm.list_models())
    res["timm_registered_by_terratorch"] = sorted(set(timm_after) - timm_before)
    Path(out).write_text(json.dumps(res, indent=1))


def terratorch_registries(python: str) -> dict:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"terrahost-coverage-{os.getpid()}.json"
    cmd = [python, str(Path(__file__).resolve()), "--dump-terratorch", str(tmp)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not tmp.exists():
        sys.exit(f"importing terratorch with {python} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    try:
        return json.loads(tmp.read_text())
    finally:
        tmp.unlink()


# --------------------------------------------------------------------------- terrahost side
class Terrahost:
    def __init__(self, exe: str, plugin_dirs: list[str]):
        self.base = [exe] + [a for d in plugin_dirs for a in ("--plugin-dir", d)]

    def run(self, args: list[str], timeout: float | None = None):
        return subprocess.run(self.base + args, capture_output=True, text=True, timeout=timeout)

    def version(self) -> str:
        return self.run(["--version"]).stdout.strip()

    def registries(self) -> dict:
        p = self.run(["list", "--json"])
        if p.returncode != 0:
            sys.exit(f"`terrahost list --json` failed:\n{p.stderr}")
        return {reg: {s["prefix"]: s["names"] for s in srcs} for reg, srcs in json.loads(p.stdout).items()}

    def plugins(self) -> list:
        p = self.run(["plugins", "--json"])
        return [{k: pl.get(k) for k in ("name", "version", "api_version", "sha256")}
                for pl in json.loads(p.stdout).get("loaded", [])] if p.returncode == 0 else []

    def why_not(self, registry: str, name: str) -> tuple[str, str]:
        """('refused', reason) or ('missing', message) for a name terrahost does not list."""
        p = self.run(["show", registry, name, "--json"])
        errs = [l.removeprefix("error: ").strip() for l in p.stderr.splitlines() if l.startswith("error")]
        msg = " ".join(errs) or p.stderr.strip()
        if p.returncode == 0:
            return "refused", "terrahost shows it but does not list it (alias?)"
        if " is not in " in msg or "no source" in msg:
            return "missing", msg
        return "refused", msg


# --------------------------------------------------------------------------- classification
def classify(tt: dict, th: dict, terrahost: Terrahost, jobs: int) -> list[dict]:
    rows = []
    timm_tt = set(tt["timm_registered_by_terratorch"])
    for reg, sources in tt["registries"].items():
        th_reg = th.get(reg, {})
        for prefix, names in sources.items():
            if reg == FACTORY[0]:
                have = {n: p for p, ns in th_reg.items() for n in ns}
                groups = [(NO_PREFIX, names)]
                th_names = set(have)
            elif reg == "backbone" and prefix == "timm":
                groups = [(TIMM_TT, [n for n in names if n in timm_tt]),
                          (TIMM_OWN, [n for n in names if n not in timm_tt])]
                th_names = set(th_reg.get(prefix, []))
                have = {n: prefix for n in th_names}
            else:
                groups = [(prefix, names)]
                th_names = set(th_reg.get(prefix, []))
                have = {n: prefix for n in th_names}
            for label, group in groups:
                rows.append({"registry": reg, "source": label, "prefix": None if prefix == NO_PREFIX else prefix,
                             "terratorch": list(group),
                             "built": {n: have[n] for n in group if n in have},
                             "refused": {}, "missing": {}})
            extra = sorted(th_names - set(names))
            if extra:
                rows[-1]["terrahost_only"] = extra
    # ask terrahost about every name it does not list
    asks = [(row, n) for row in rows for n in row["terratorch"] if n not in row["built"]]

    def ask(item):
        row, n = item
        full = n if row["prefix"] is None else f"{row['prefix']}_{n}"
        return item, terrahost.why_not(row["registry"], full)

    with cf.ThreadPoolExecutor(jobs) as ex:
        for (row, n), (kind, msg) in ex.map(ask, asks):
            row[kind][n] = msg
    # TerraTorch sources terrahost has but TerraTorch lacks (e.g. a plugin of its own)
    for reg, srcs in th.items():
        for prefix, names in srcs.items():
            if reg != FACTORY[0] and prefix not in tt["registries"].get(reg, {}):
                rows.append({"registry": reg, "source": prefix, "prefix": prefix, "terratorch": [],
                             "built": {}, "refused": {}, "missing": {}, "terrahost_only": list(names)})
    return rows


# --------------------------------------------------------------------------- optional builds
def build_all(rows: list[dict], terrahost: Terrahost, timeout: float, threads: int) -> None:
    for row in rows:
        res = row["build"] = {}
        for n, prefix in row["built"].items():
            reg = row["registry"]
            full = n if reg == FACTORY[0] else f"{prefix}_{n}"
            if reg == FACTORY[0]:
                res[n] = {"status": "not tried", "why": "a factory needs a whole model config"}
                continue
            info = json.loads(terrahost.run(["show", reg, full, "--json"]).stdout)
            args, lacking = {}, []
            for p in info["parameters"]:
                if p.get("required"):
                    key = next((k for k in ((p["name"], p["type"]), p["name"]) if k in BUILD_FILL), None)
                    if key is not None:
                        args[p["name"]] = BUILD_FILL[key]
                    else:
                        lacking.append(p["name"])
            if lacking:
                res[n] = {"status": "not tried", "why": "needs " + ", ".join(lacking)}
                continue
            declared = {p["name"] for p in info["parameters"]}
            tries = ([(c, {**args, **e}) for c, e in BUILD_TRIES if set(e) <= declared]
                     if info.get("takes_channels") else [(None, args)])
            errors = []
            for channels, args in tries:
                cmd = ["--threads", str(threads), "build", reg, full, "--json", "--args", json.dumps(args)]
                if channels:
                    cmd += ["--channels", channels]
                t0 = time.monotonic()
                try:
                    p = terrahost.run(cmd, timeout=timeout)
                except subprocess.TimeoutExpired:
                    errors.append(f"over {timeout:.0f} s")
                    res[n] = {"status": "timeout", "why": errors[0], "args": args, "channels": channels}
                    continue
                wall = round(time.monotonic() - t0, 1)
                if p.returncode == 0:
                    out = json.loads(p.stdout)
                    res[n] = {"status": "ok", "parameters": out.get("parameters"), "wall_s": wall,
                              "args": args, "channels": channels}
                    break
                errs = [l for l in p.stderr.splitlines() if l.startswith("error")]
                errors.append((" ".join(errs) or p.stderr.strip())[-500:])
                too_big = "TERRAHOST_MAX_MEMORY_GB" in errors[0] or "of memory is available" in errors[0]
                res[n] = {"status": "over memory" if too_big else "failed", "why": errors[0],
                          "errors_of_each_try": errors, "wall_s": wall, "args": args, "channels": channels}
            print(f"  build {reg} {full}: {res[n]['status']} ({res[n].get('wall_s')} s)", file=sys.stderr)


# --------------------------------------------------------------------------- output
def markdown(rows: list[dict], meta: dict, names: bool) -> str:
    v = meta["terratorch_versions"]
    out = [f"Coverage of TerraTorch {v['terratorch']}'s registries by {meta['terrahost']} "
           f"(timm {v['timm']}, segmentation-models-pytorch {v['segmentation-models-pytorch']}, "
           f"mmsegmentation {v['mmsegmentation']}), generated by `scripts/coverage/coverage.py`.", ""]
    built_col = any("build" in r for r in rows)
    head = "| registry | source | TerraTorch | terrahost builds | refused with a reason | missing | terrahost only |"
    if built_col:
        head += " build check |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    tot = {"tt": 0, "b": 0, "r": 0, "m": 0}
    for r in rows:
        cells = [r["registry"], f"`{r['source']}`" if r["source"] in (r["prefix"] or "") else r["source"],
                 len(r["terratorch"]), len(r["built"]), len(r["refused"]), len(r["missing"]),
                 len(r.get("terrahost_only", []))]
        if built_col:
            st = [b["status"] for b in r.get("build", {}).values()]
            cells.append(", ".join(f"{st.count(s)} {s}" for s in ("ok", "failed", "over memory", "timeout", "not tried") if st.count(s)) or "")
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
        if r["source"] != TIMM_OWN:
            tot["tt"] += len(r["terratorch"]); tot["b"] += len(r["built"])
            tot["r"] += len(r["refused"]); tot["m"] += len(r["missing"])
    out.append(f"| **all but timm's own models** | | **{tot['tt']}** | **{tot['b']}** | **{tot['r']}** | **{tot['m']}** | |"
               + (" |" if built_col else ""))
    out += ["", "*refused*: terrahost knows the name and answers with its reason; *missing*: terrahost answers "
            "that the name is not in its registry; *terrahost only*: names terrahost registers that TerraTorch's "
            "registry does not list."]
    if names:
        for r in rows:
            for kind in ("refused", "missing"):
                if r[kind] and r["source"] != TIMM_OWN:
                    out += ["", f"**{r['registry']} / {r['source']}, {kind}** ({len(r[kind])}):", ""]
                    if kind == "refused":  # one line per reason, the name in it written NAME
                        by_why: dict[str, list[str]] = {}
                        for n, why in sorted(r[kind].items()):
                            full = n if r["prefix"] is None else f"{r['prefix']}_{n}"
                            key = why.replace(f"`{full}`", "NAME").replace(f"`{n}`", "NAME")
                            by_why.setdefault(key, []).append(n)
                        out += ["- " + ", ".join(f"`{n}`" for n in ns) + f": {why}" for why, ns in by_why.items()]
                    else:
                        out += [", ".join(f"`{n}`" for n in sorted(r[kind]))]
            if r.get("terrahost_only"):
                out += ["", f"**{r['registry']} / {r['source']}, terrahost only** ({len(r['terrahost_only'])}): "
                        + ", ".join(f"`{n}`" for n in r["terrahost_only"])]
            bad = {n: b for n, b in r.get("build", {}).items() if b["status"] in ("failed", "over memory", "timeout")}
            if bad:
                out += ["", f"**{r['registry']} / {r['source']}, build check failures** ({len(bad)}):", ""]
                out += [f"- `{n}`: {b['status']}: {b['why']}" for n, b in sorted(bad.items())]
        own = next((r for r in rows if r["source"] == TIMM_OWN), None)
        if own:
            out += ["", f"timm's own models: {len(own['missing'])} missing names, left out of this list "
                    "(in the JSON)."]
    return "\n".join(out) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--dump-terratorch":
        dump_terratorch(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=os.environ.get("TERRAHOST_COVERAGE_PYTHON", str(REPO / ".venv-ref/bin/python")),
                    help="a Python with terratorch (default: $TERRAHOST_COVERAGE_PYTHON, else .venv-ref/bin/python)")
    ap.add_argument("--terrahost", default=os.environ.get("TERRAHOST_BIN", str(REPO / "target/debug/terrahost")),
                    help="the terrahost front (default: $TERRAHOST_BIN, else target/debug/terrahost)")
    ap.add_argument("--plugin-dir", action="append", default=[],
                    help="plugin directory (repeatable; default: terrahost's own default)")
    ap.add_argument("--out", help="write OUT.md and OUT.json (default: print the Markdown only)")
    ap.add_argument("--readme", help="also replace the table between the coverage markers of this file "
                    "(`<!-- coverage:begin -->` ... `<!-- coverage:end -->`), e.g. README.md")
    ap.add_argument("--names", action="store_true", help="list the refused and missing names in the Markdown")
    ap.add_argument("--build", action="store_true", help="build each entry terrahost has, with default arguments")
    ap.add_argument("--build-timeout", type=float, default=300, help="seconds per build (default 300)")
    ap.add_argument("--build-memory-gb", type=float, default=8,
                    help="TERRAHOST_MAX_MEMORY_GB for the builds (default 8): larger models are refused, not built")
    ap.add_argument("--threads", type=int, default=1, help="libtorch threads per build (default 1)")
    ap.add_argument("--jobs", type=int, default=8, help="parallel `terrahost show` queries (default 8)")
    a = ap.parse_args()

    terrahost = Terrahost(a.terrahost, a.plugin_dir)
    tt = terratorch_registries(a.python)
    th = terrahost.registries()
    rows = classify(tt, th, terrahost, a.jobs)
    if a.build:
        os.environ["TERRAHOST_MAX_MEMORY_GB"] = f"{a.build_memory_gb:g}"
        build_all(rows, terrahost, a.build_timeout, a.threads)
    meta = {"terratorch_versions": tt["versions"], "terratorch_imported_from": tt["terratorch_imported_from"], "terrahost": terrahost.version(),
            "plugins": terrahost.plugins(),
            "build_memory_gb": a.build_memory_gb if a.build else None, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "scripts/coverage/coverage.py " + " ".join(sys.argv[1:])}
    md = markdown(rows, meta, a.names)
    if a.out:
        Path(a.out + ".md").write_text(md)
        rows_json = [{**r, "terratorch": len(r["terratorch"]),
                      "built": sorted(r["built"]) if r["source"] != NO_PREFIX else r["built"],
                      "missing": sorted(r["missing"])} for r in rows]
        Path(a.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows_json}, indent=1) + "\n")
        print(f"wrote {a.out}.md and {a.out}.json", file=sys.stderr)
    if a.readme:
        begin, end = "<!-- coverage:begin -->", "<!-- coverage:end -->"
        text = Path(a.readme).read_text()
        if begin not in text or end not in text:
            sys.exit(f"{a.readme} has no {begin} ... {end} markers")
        table = markdown(rows, meta, False)
        head, rest = text.split(begin, 1)
        Path(a.readme).write_text(head + begin + "\n" + table + rest[rest.index(end):])
        print(f"updated the coverage table in {a.readme}", file=sys.stderr)
    print(md)


if __name__ == "__main__":
    main()
