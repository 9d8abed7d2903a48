#!/usr/bin/env python3
"""Markdown summary of a corpus precision report (target/corpus-bf16-report.json or
target/corpus-int8-report.json, written by the ignored tests `corpus::bf16_accuracy_on_the_corpus`
and `corpus::int8_accuracy_on_the_corpus`): per task family, the largest error against
float64 relative to the output's magnitude, the agreement of the argmax decisions with float64,
and how many of float64's detections the detection configs find. Standard library only."""

import json
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    report = json.load(open(path))
    configs = report["configs"]
    rel, agree, total = [], 0, 0
    worst = []
    det_found, det_compared, det_iou, det_err = 0, 0, [], []
    failed = []
    for slug, c in sorted(configs.items()):
        outs = c["outputs"]
        if "error" in outs:
            failed.append((slug, outs["error"]))
            continue
        for name, o in outs.items():
            if "error" in o:
                failed.append((f"{slug} {name}", o["error"]))
                continue
            if "compared" in o:  # a detection image
                det_found += o["found"]
                det_compared += o["compared"]
                if o["found"]:
                    det_iou.append(o["mean_iou"])
                    det_err.append(o["max_box_err_px"])
                continue
            if "rel_err_vs_f64" not in o:
                continue
            rel.append(o["rel_err_vs_f64"])
            worst.append((o["rel_err_vs_f64"], slug, name))
            agree += o.get("argmax_agree", 0)
            total += o.get("argmax_total", 0)
    print(f"configs measured: {len(configs)}; outputs compared: {len(rel)}")
    if rel:
        print(f"| | relative error against float64 |")
        print("|---|---|")
        print(f"| median | {statistics.median(rel):.2e} |")
        print(f"| 90th percentile | {sorted(rel)[int(0.9 * (len(rel) - 1))]:.2e} |")
        print(f"| largest | {max(rel):.2e} ({max(worst)[1]} `{max(worst)[2]}`) |")
    if total:
        print(f"\nargmax decisions (segmentation and classification): {agree} of {total} agree with float64 "
              f"({100 * agree / total:.4f} %)")
    if det_compared:
        print(f"detection: {det_found} of {det_compared} float64 detections found (same label, IoU >= 0.5), "
              f"{100 * det_found / det_compared:.1f} %; mean IoU per image {min(det_iou):.3f}-{max(det_iou):.3f}; "
              f"largest coordinate error of a found box {max(det_err):.1f} px")
    for slug, e in failed:
        print(f"FAILED {slug}: {e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/corpus-bf16-report.json")
