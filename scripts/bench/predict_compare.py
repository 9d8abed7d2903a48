#!/usr/bin/env python
"""The predict benchmark of issue 9: terrahost against TerraTorch 1.2.11 on the same
GeoTIFF scene, config (predict_prithvi_unet.yaml: prithvi_eo_v1_100 + UNet, crop 224,
stride 192, batch_size 8) and weights, with the same libtorch thread count.

1. **Tiles per second, warm.** Both sides stay alive in persistent processes with the
   model built: terrahost as `terrahost predict --input - --json-lines` (scene paths on
   stdin), TerraTorch as a worker (`--worker`) that runs its own predict path per scene
   (GenericNonGeoSegmentationDataModule -> Trainer.predict -> SemanticSegmentationTask.
   predict_step -> tiled_inference -> CustomWriter). After one warm-up scene each, the
   scene is predicted by A then B, then B then A, ..., and the time ratio
   terrahost / TerraTorch is taken pair by pair: the median and the spread are reported.
   The class maps of the two sides are compared too.
   With `--runtime ort` and/or `--runtime openvino` (run under `.venv-bench`, which has them),
   more TerraTorch workers join the same rounds: TerraTorch's own predict path, with only the
   model's forward handed to ONNX Runtime or OpenVINO (fp32) on `torch.onnx.export`'s graph of
   the same model and weights, with a dynamic batch (made once, `model_dynamic.onnx`). That is
   what a user who serves with one of them and keeps TerraTorch's reading, tiling and writing
   runs. Each side's time is divided by terrahost's of the same round.
   With `--terrahost-precision int8` (or bf16) a second terrahost process, run with that
   `--precision`, joins the same rounds; its class map is compared with terrahost's fp32 one
   and with TerraTorch's.
2. **Time to the first output file and peak RSS, cold.** Fresh processes, interleaved:
   `terrahost predict` against `terratorch predict -c ... --ckpt_path ...`, each under
   /usr/bin/time (peak RSS), the first output file watched for in its output directory.

    .venv-ref/bin/python scripts/bench/predict_compare.py --terrahost target/release/terrahost \
        --plugin-dir target/bench/predict/plugins [--size 2048] [--pairs 5] [--cold-pairs 2] \
        [--runtime ort --runtime openvino]

Writes target/bench/predict/compare.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFIG = HERE / "predict_prithvi_unet.yaml"


def write_scene(path: Path, size: int) -> None:
    """The size x size x 6-band scene of synthetic_scene.py, with a nodata corner block."""
    from synthetic_scene import write_scene as write

    write(path, size, size, nodata_corner=True)


# ---------------------------------------------------------------------------------------
# TerraTorch's side: a persistent worker.


def build_task(threads: int):
    import torch
    import yaml

    sys.path.insert(0, str(REPO / "scripts" / "reference"))
    import refkit  # noqa: F401  (mmcv stand-ins, then terratorch)
    from terratorch.tasks import SemanticSegmentationTask

    torch.set_num_threads(threads)
    cfg = yaml.safe_load(CONFIG.read_text())
    task = SemanticSegmentationTask(**cfg["model"]["init_args"])
    sd = {k: refkit.synth(k, t).to(t.dtype) for k, t in task.model.state_dict().items()}
    task.model.load_state_dict(sd, strict=True)
    task.eval()
    return task, cfg


def export_weights(task, work: Path) -> None:
    """The synthetic weights as safetensors (terrahost) and a Lightning checkpoint
    (`terratorch predict --ckpt_path`)."""
    import lightning.pytorch as pl
    import torch
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in task.model.state_dict().items()}
    save_file(sd, str(work / "weights.safetensors"))
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": pl.__version__}, work / "model.ckpt")


def predict_once(task, cfg: dict, scene: Path, out_dir: Path) -> None:
    import lightning.pytorch as pl
    from terratorch.cli_tools import CustomWriter
    from terratorch.datamodules import GenericNonGeoSegmentationDataModule

    data = dict(cfg["data"]["init_args"])
    data.update(predict_data_root=str(scene.parent), img_grep=scene.name)
    dm = GenericNonGeoSegmentationDataModule(**data)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CustomWriter(output_dir=str(out_dir), write_interval="batch")])
    trainer.out_dtype = "int16"  # what TerraTorch's CLI sets (its default)
    trainer.predict(task, datamodule=dm, return_predictions=False)


def export_dynamic_onnx(model, path: Path, bands: int, crop: int) -> None:
    """torch.onnx.export of the model's logits with a dynamic batch (the last batch of a
    scene's crops is smaller): the dynamo exporter, and the TorchScript one if that fails."""
    import torch

    from runtimes import output_only  # the logits alone, as the catalog model's export

    logits = output_only(model)
    x = torch.randn(2, bands, crop, crop)
    tmp = path.with_suffix(".onnx.tmp")
    errors = []
    for dynamo in (True, False):
        try:
            kwargs = ({"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=1024)},)} if dynamo
                      else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}})
            with torch.no_grad():
                torch.onnx.export(logits, (x,), str(tmp), input_names=["x"], output_names=["y"], opset_version=18,
                                  dynamo=dynamo, external_data=False, **kwargs)
            os.replace(tmp, path)
            return
        except Exception as e:  # noqa: BLE001 - the other exporter is tried, then the failure reported
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    sys.exit(f"predict_compare: torch.onnx.export failed: {'; '.join(errors)}")


def runtime_model(task, cfg: dict, work: Path, runtime: str, threads: int):
    """A stand-in for `task.model` whose forward runs in ONNX Runtime or OpenVINO (fp32) and
    returns TerraTorch's ModelOutput, so that the rest of TerraTorch's predict path is unchanged."""
    import numpy as np
    import torch
    from terratorch.models.model import ModelOutput

    onnx_path = work / "model_dynamic.onnx"
    if not onnx_path.exists():
        bands = len(cfg["data"]["init_args"]["means"])  # one normalisation per band
        crop = cfg["model"]["init_args"]["tiled_inference_parameters"]["crop"]
        export_dynamic_onnx(task.model, onnx_path, bands, crop)
    if runtime == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x):
            return sess.run(None, {name: x})[0]
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

    class RuntimeModel(torch.nn.Module):
        def forward(self, x, **kwargs):
            return ModelOutput(output=torch.from_numpy(run(np.ascontiguousarray(x.detach().numpy(), np.float32))))

    return RuntimeModel().eval()


def worker(threads: int, work: Path, runtime: str = "torch") -> None:
    """Reads `SCENE OUT_DIR` lines, predicts, answers one JSON line each."""
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    task, cfg = build_task(threads)
    if not (work / "weights.safetensors").exists():
        export_weights(task, work)
    if runtime != "torch":
        task.model = runtime_model(task, cfg, work, runtime, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        scene, out_dir = line.rstrip("\n").split("\t")
        t0 = time.perf_counter()
        predict_once(task, cfg, Path(scene), Path(out_dir))
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


# ---------------------------------------------------------------------------------------
# The driver.


class Side:
    """A persistent process answering one JSON line per scene."""

    def __init__(self, name: str, argv: list[str], ready_line: bool, env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=REPO)
        if ready_line:
            self._read()

    def _read(self) -> dict:
        """The next JSON line on stdout; other lines (an exporter's progress) are skipped."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f"{self.name} stopped (exit {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def predict(self, request: str) -> float:
        """The wall time of one scene, from the request to the reply."""
        t0 = time.perf_counter()
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        self.last = self._read()
        wall = time.perf_counter() - t0
        if self.last.get("status", "written") != "written":
            sys.exit(f"{self.name}: {self.last}")
        return wall

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def class_map(path: Path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform, ds.dtypes[0], ds.nodata


def cold_run(argv: list[str], out_file: Path, rss_file: Path, threads: int) -> tuple[float, float, float]:
    """(seconds to `out_file`, process wall, peak RSS MiB) of a fresh process."""
    if out_file.exists():
        out_file.unlink()
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv], cwd=out_file.parent.parent,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None:
        if first is None and out_file.exists():
            first = time.perf_counter() - t0
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    err = p.stderr.read()
    if p.returncode != 0 or not out_file.exists():
        sys.exit(f"{argv[0]} failed (exit {p.returncode}):\n{err[-3000:]}")
    if first is None:
        first = wall
    return first, wall, int(rss_file.read_text().split()[-1]) / 1024


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--terrahost", default=str(REPO / "target/release/terrahost"))
    ap.add_argument("--plugin-dir", default=str(REPO / "target/bench/predict/plugins"))
    ap.add_argument("--work", default=str(REPO / "target/bench/predict"))
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--cold-pairs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", action="append", choices=["ort", "openvino"], default=[],
                    help="also TerraTorch's predict with the forward in this runtime (repeatable)")
    ap.add_argument("--forward", choices=["torch", "ort", "openvino"], default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="where to write the results (default WORK/compare.json)")
    ap.add_argument("--terrahost-precision", choices=["bf16", "int8"], action="append", default=[],
                    help="also run terrahost with this --precision in the warm rounds (repeatable)")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    a.terrahost = str(Path(a.terrahost).resolve())
    a.plugin_dir = str(Path(a.plugin_dir).resolve())
    if a.worker:
        worker(a.threads, work, a.forward)
        return
    work.mkdir(parents=True, exist_ok=True)
    scenes = work / "scenes"
    scenes.mkdir(exist_ok=True)
    scene = scenes / f"scene_{a.size}.tif"
    if not scene.exists():
        print(f"==> writing {scene}", file=sys.stderr)
        write_scene(scene, a.size)
    lowered = [f"terrahost-{p}" for p in a.terrahost_precision]
    out = {s: work / f"out-{s}" for s in ("terrahost", "terratorch", *a.runtime, *lowered)}
    for d in out.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()

    print("==> starting both sides (TerraTorch builds the model and exports its weights)", file=sys.stderr)
    tt = Side("TerraTorch", [sys.executable, __file__, "--worker", "--threads", str(a.threads), "--work", str(work)],
              ready_line=True)
    def terrahost_side(name: str, extra: list[str]) -> Side:
        return Side(name, [a.terrahost, "--threads", str(a.threads), "--plugin-dir", a.plugin_dir, "predict",
                           "--config", str(CONFIG), "--weights", str(work / "weights.safetensors"), "--input", "-",
                           "--json-lines", "--overwrite", "--quiet", "--output-dir", str(out[name]), *extra],
                    ready_line=False)

    th = terrahost_side("terrahost", [])
    others = {}
    for rt in a.runtime:
        print(f"==> starting TerraTorch with the forward in {rt} (exports the ONNX graph once)", file=sys.stderr)
        others[rt] = Side(rt, [sys.executable, __file__, "--worker", "--threads", str(a.threads), "--work", str(work),
                               "--forward", rt], ready_line=True)
    for name, p in zip(lowered, a.terrahost_precision):
        others[name] = terrahost_side(name, ["--precision", p])
    req_th = str(scene)
    req_tt = f"{scene}\t{out['terratorch']}"
    sides = [("th", th, req_th), ("tt", tt, req_tt)] + [
        (k, side, str(scene) if k in lowered else f"{scene}\t{out[k]}") for k, side in others.items()]
    print("==> warm-up: one scene each", file=sys.stderr)
    for _, side, req in sides:
        side.predict(req)
    times = {k: [] for k, _, _ in sides}
    for i in range(a.pairs):
        order = sides if i % 2 == 0 else sides[::-1]
        got = {k: side.predict(req) for k, side, req in order}
        for k, t in got.items():
            times[k].append(t)
        print(f"    round {i + 1}: " + ", ".join(f"{k} {t:.2f} s" for k, t in got.items())
              + f"; terrahost / TerraTorch {got['th'] / got['tt']:.3f}", file=sys.stderr)
    t_th, t_tt = times["th"], times["tt"]
    ratios = [x / y for x, y in zip(t_th, t_tt)]
    chips = th.last.get("chips")
    for _, side, _ in sides:
        side.close()

    stem = scene.stem
    m_th, crs_th, tr_th, dt_th, nd_th = class_map(out["terrahost"] / f"{stem}_pred.tif")
    m_tt, crs_tt, tr_tt, dt_tt, nd_tt = class_map(out["terratorch"] / f"{stem}_pred.tif")
    differ = int((m_th != m_tt).sum())
    same_geo = (crs_th, tr_th, dt_th, nd_th, m_th.shape) == (crs_tt, tr_tt, dt_tt, nd_tt, m_tt.shape)
    runtimes = {}
    for rt in a.runtime:
        m_rt = class_map(out[rt] / f"{stem}_pred.tif")[0]
        r = [x / y for x, y in zip(t_th, times[rt])]
        runtimes[rt] = {"seconds": times[rt], "terrahost_over_it": r, "median_ratio": statistics.median(r),
                        "ratio_spread": [min(r), max(r)], "class_map_pixels_differing_from_terrahost":
                        int((m_rt != m_th).sum())}
    precisions = {}
    for name in lowered:
        m_p = class_map(out[name] / f"{stem}_pred.tif")[0]
        r = [x / y for x, y in zip(times[name], t_th)]
        r_tt = [x / y for x, y in zip(times[name], t_tt)]
        precisions[name] = {"seconds": times[name], "over_terrahost_fp32": r, "median_over_terrahost_fp32":
                            statistics.median(r), "over_terratorch": r_tt, "median_over_terratorch":
                            statistics.median(r_tt), "class_map_pixels_differing_from_terrahost_fp32":
                            int((m_p != m_th).sum()), "class_map_pixels_differing_from_terratorch":
                            int((m_p != m_tt).sum())}

    cold = {"terrahost": [], "terratorch": []}
    if a.cold_pairs:
        print("==> cold: fresh processes, time to the first output file and peak RSS", file=sys.stderr)
        # `terratorch predict` itself, after the mmcv stand-ins its import needs here
        # (mmcv-lite lacks the compiled mmcv.ops; see scripts/reference/mmcv_stand_in.py).
        tt_cli = [sys.executable, "-c",
                  f"import sys; sys.path.insert(0, {str(REPO / 'scripts' / 'reference')!r}); "
                  "from mmcv_stand_in import install_stand_ins; install_stand_ins(); "
                  "from terratorch.__main__ import main; sys.argv[0] = 'terratorch'; sys.exit(main())"]
        for i in range(a.cold_pairs):
            runs = [
                ("terrahost", [a.terrahost, "--threads", str(a.threads), "--plugin-dir", a.plugin_dir, "predict",
                               "--config", str(CONFIG), "--weights", str(work / "weights.safetensors"), "--input",
                               str(scene), "--output-dir", str(work / "cold-terrahost"), "--overwrite", "--quiet"]),
                ("terratorch", [*tt_cli, "predict", "-c", str(CONFIG), "--ckpt_path", str(work / "model.ckpt"),
                                "--data.init_args.predict_data_root", str(scenes),
                                "--data.init_args.img_grep", scene.name, "--predict_output_dir",
                                str(work / "cold-terratorch"), "--trainer.logger", "false",
                                "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]),
            ]
            if i % 2:
                runs.reverse()
            for name, argv in runs:
                d = work / f"cold-{name}"
                d.mkdir(exist_ok=True)
                first, wall, rss = cold_run(argv, d / f"{stem}_pred.tif", work / f".rss-{name}", a.threads)
                cold[name].append({"first_output_s": first, "wall_s": wall, "peak_rss_mib": rss})
                print(f"    {name}: first output {first:.1f} s, wall {wall:.1f} s, peak RSS {rss:.0f} MiB",
                      file=sys.stderr)

    med = statistics.median
    summary = {
        "scene": {"path": str(scene), "size": a.size, "bands": 6, "dtype": "uint16"},
        "config": str(CONFIG.relative_to(REPO)),
        "threads": a.threads,
        "chips": chips,
        "warm": {"pairs": a.pairs, "terrahost_s": t_th, "terratorch_s": t_tt, "ratios": ratios,
                 "median_ratio": med(ratios), "ratio_spread": [min(ratios), max(ratios)]},
        "class_maps": {"pixels": int(m_th.size), "differ": differ, "same_georeferencing_and_dtype": same_geo},
        "terratorch_with_forward_in": runtimes,
        "terrahost_precisions": precisions,
        "cold": cold,
        "torch": __import__("torch").__version__,
    }
    (Path(a.json) if a.json else work / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"scene {a.size} x {a.size} x 6 uint16, threads {a.threads}, {a.pairs} interleaved pairs")
    print(f"warm, per scene: terrahost median {med(t_th):.2f} s, TerraTorch median {med(t_tt):.2f} s; "
          f"ratio median {med(ratios):.3f} (spread {spread(ratios)}; target <= 0.9)")
    print(f"class maps: {differ} of {m_th.size} pixels differ; georeferencing, dtype and nodata "
          f"{'identical' if same_geo else 'DIFFER'}")
    for rt, r in runtimes.items():
        print(f"TerraTorch with the forward in {rt}: median {med(r['seconds']):.2f} s; terrahost / it: median "
              f"{r['median_ratio']:.3f} (spread {spread(r['terrahost_over_it'])}); class map: "
              f"{r['class_map_pixels_differing_from_terrahost']} pixels differ from terrahost's")
    for name, r in precisions.items():
        print(f"{name}: median {med(r['seconds']):.2f} s; over terrahost fp32 median "
              f"{r['median_over_terrahost_fp32']:.3f} (spread {spread(r['over_terrahost_fp32'])}), over TerraTorch "
              f"{r['median_over_terratorch']:.3f}; class map: {r['class_map_pixels_differing_from_terrahost_fp32']} "
              f"pixels differ from terrahost fp32's, {r['class_map_pixels_differing_from_terratorch']} from "
              f"TerraTorch's")
    for name, runs in cold.items():
        if runs:
            print(f"cold {name}: first output {spread([r['first_output_s'] for r in runs])} s, "
                  f"peak RSS {spread([r['peak_rss_mib'] for r in runs])} MiB")


if __name__ == "__main__":
    main()
