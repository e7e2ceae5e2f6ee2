"""The `fqse` command. Each subcommand imports only what it needs (runtime ones never load torch)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _data(a: argparse.Namespace) -> None:
    from training.datagen import DataGenError, generate
    sources = [x.strip() for x in a.source.split(",") if x.strip()]
    bad = [x for x in sources if x not in ("debian", "espeak")]
    if bad or not sources:
        raise DataGenError(f"--source {a.source!r}: use debian, espeak or debian,espeak")
    if a.espeak_share is not None and set(sources) != {"debian", "espeak"}:
        raise DataGenError("--espeak-share adds synthesized utterances to a real-speech set: use it with "
                           "--source debian,espeak")
    if "debian" in sources:
        from training.realdata import DEFAULT_PACKAGES, build
        packages = tuple(a.packages.split(",")) if a.packages else DEFAULT_PACKAGES
        share = (0.25 if a.espeak_share is None else a.espeak_share) if "espeak" in sources else 0.0
        root = build(a.out, packages, a.cache, a.max_clips, a.copies, espeak_share=share,
                     seed=a.seed, show_progress=not a.quiet, overwrite=a.overwrite)
        print(f"wrote real-speech LibriMix-layout set under {root} (licenses: {Path(a.out) / 'README.md'})")
        return
    root = generate(a.out, a.preset, a.seed, show_progress=not a.quiet, overwrite=a.overwrite)
    print(f"wrote LibriMix-layout set ({a.preset}) under {root}")


def _train(a: argparse.Namespace) -> None:
    from training.config import load_config
    from training.train import train
    best = train(load_config(a.yaml), a.work_dir, resume=a.resume, max_steps=a.max_steps, overwrite=a.overwrite)
    print(f"best checkpoint: {best}")


def _eval(a: argparse.Namespace) -> None:
    from training.evaluate import run_eval
    split = {"test": "test_dir", "dev": "valid_dir", "train": "train_dir"}[a.split]
    run_eval(a.yaml, a.checkpoint, a.compare, a.json, a.plot, split, a.limit, a.segment)


def _average(a: argparse.Namespace) -> None:
    from training.checkpoint import average
    average(a.checkpoints, a.output)
    print(f"wrote {a.output}: the average of {len(a.checkpoints)} checkpoints")


def _check_suffix(path: str, ext: str) -> None:
    if Path(path).suffix.lower() != ext:
        from fqse.boundary import UsageError
        raise UsageError(f"-o {path}: this command writes {ext}; name the output *{ext}")


def _export(a: argparse.Namespace) -> None:
    from conversion.pipeline import convert, resolve_activations
    _check_suffix(a.output, ".onnx")
    report = convert(a.checkpoint, a.output, "onnx", a.float, a.yaml, _step_frames(a),
                     activations=resolve_activations(a.activations))
    print(json.dumps(report, indent=1))


def _step_frames(a: argparse.Namespace) -> int | None:
    """--step-ms -> encoder frames per step call (the model's hop is read from the checkpoint)."""
    if not a.step_ms:
        return None
    from training.checkpoint import load_model
    cfg = load_model(a.checkpoint).cfg
    if a.step_ms * cfg.sample_rate / 1000 < cfg.stride:
        from fqse.boundary import UsageError
        raise UsageError(f"--step-ms {a.step_ms:g} is shorter than one encoder hop "
                         f"({1000 * cfg.stride / cfg.sample_rate:g} ms)")
    return round(a.step_ms * cfg.sample_rate / 1000 / cfg.stride)


def _convert(a: argparse.Namespace) -> None:
    from conversion.pipeline import convert_tflite
    _check_suffix(a.output, ".tflite")
    report = convert_tflite(a.checkpoint, a.output, float_model=a.float, yaml=a.yaml, step_frames=_step_frames(a))
    print(json.dumps(report, indent=1))


def _import(a: argparse.Namespace) -> None:
    from conversion.importers import import_checkpoint
    from training.config import load_config, model_config
    cfg = model_config(load_config(a.yaml)) if a.yaml else None
    report = import_checkpoint(a.source, a.output, cfg, ptq_method=a.ptq, calibration=a.calibration,
                               progress=not a.quiet)
    print(json.dumps(report, indent=1))


def _parity(a: argparse.Namespace) -> None:
    from conversion.parity import run_parity
    run_parity(a.checkpoint, a.audio, onnx=a.onnx, tflite=a.tflite, clean=a.clean, json_out=a.json,
               float_checkpoint=a.float_checkpoint, per_layer=a.per_layer)


def _enhance(a: argparse.Namespace) -> None:
    from runtime.enhancer import enhance_cli
    enhance_cli(a.input, a.output, a.model, stream=a.stream, hop_ms=a.hop_ms, threads=a.threads)


def _stream(a: argparse.Namespace) -> None:
    from runtime.enhancer import stream_stdio
    stream_stdio(a.model, hop_ms=a.hop_ms, threads=a.threads)


def _bench(a: argparse.Namespace) -> None:
    from fqse.boundary import UsageError
    if a.compare_onnx2tf:
        if a.model or a.stream or len(a.threads) > 1:
            raise UsageError("--compare-onnx2tf takes a checkpoint, one --threads value and no --model / --stream")
        from conversion.onnx2tf_compare import compare_onnx2tf, require_onnx2tf
        require_onnx2tf()  # before any conversion: one line naming the install command
        res = compare_onnx2tf(a.compare_onnx2tf, threads=a.threads[0], seconds=a.seconds, out=a.out)
        if a.json:
            from runtime.files import atomic_write
            atomic_write(a.json, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=1)))
        return
    if not a.model:
        raise UsageError("bench needs --model M... (or --compare-onnx2tf CHECKPOINT)")
    from runtime.bench import bench_cli
    if a.profile and a.stream:
        raise UsageError("--profile times the offline run: drop --stream")
    bench_cli(a.model, threads=a.threads, seconds=a.seconds, stream=a.stream, hop_ms=a.hop_ms, json_out=a.json,
              show_profile=a.profile)


def _golden(a: argparse.Namespace) -> None:
    from runtime.golden import golden_cli
    golden_cli(a.model, a.audio, a.output, a.seconds)


def _demo(a: argparse.Namespace) -> None:
    from fqse.demo import run_demo
    run_demo(a.out)


def _report(a: argparse.Namespace) -> None:
    from fqse.report import run_report
    run_report(a.yaml, a.checkpoints, a.out, a.limit, baselines=a.baselines, curve_limit=a.curve_limit,
               score_cache=a.score_cache, rescore=a.rescore)


def build_parser() -> argparse.ArgumentParser:
    from fqse.boundary import non_negative_float, positive_float, positive_int
    p = argparse.ArgumentParser(prog="fqse", description="Fully quantized (int8) speech enhancement")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("data", help="make an offline LibriMix-layout speech set")
    s.add_argument("--source", default="espeak", help="espeak (synthesized), debian (real recordings from Debian "
                   "packages) or debian,espeak")
    s.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="size of the espeak-only set")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cache", help="debian: where packages are downloaded and decoded (default OUT/../debian-cache)")
    s.add_argument("--packages", help="debian: comma-separated package subset (default: all speech and noise "
                   "packages)")
    s.add_argument("--max-clips", type=int, help="debian: at most this many clips per talker / noise category")
    s.add_argument("--copies", type=int, default=2, help="debian: mixtures per training utterance")
    s.add_argument("--espeak-share", type=non_negative_float, help="debian,espeak: synthesized utterances added "
                   "to each split, as a share of its real ones (default 0.25)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_data)

    s = sub.add_parser("train", help="float / vanilla QAT / FQSE training")
    s.add_argument("-y", "--yaml", required=True)
    s.add_argument("--work-dir")
    s.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    s.add_argument("--overwrite", action="store_true", help="replace the checkpoints in a used work dir")
    s.add_argument("--max-steps", type=positive_int)
    s.set_defaults(func=_train)

    s = sub.add_parser("average", help="the uniform average of checkpoints of one architecture (model soup)")
    s.add_argument("checkpoints", nargs="+")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_average)

    s = sub.add_parser("eval", help="SI-SNR, SI-SNRi, SDR, STOI on a test split; SI-SNR vs input SNR plot")
    s.add_argument("-y", "--yaml", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--compare", nargs="*", default=[], help="more checkpoints for the curve")
    s.add_argument("--json")
    s.add_argument("--plot", help="PNG of output SI-SNR against input SNR")
    s.add_argument("--split", default="test", choices=("test", "dev", "train"),
                   help="the config's dataset.test_dir, valid_dir or train_dir")
    s.add_argument("--limit", type=positive_int)
    s.add_argument("--segment", type=positive_float, help="seconds: evaluate on 50%%-overlapping segments (triangular "
                   "weights) instead of whole utterances")
    s.set_defaults(func=_eval)

    for name, fn, ext, hlp in (("export", _export, ".onnx", "int8 QDQ ONNX"), ("convert", _convert, ".tflite",
                                                                                "fully-integer TFLite")):
        s = sub.add_parser(name, help=f"checkpoint -> {hlp}")
        s.add_argument("-y", "--yaml", help="config to check the checkpoint against (optional)")
        s.add_argument("--checkpoint", required=True)
        s.add_argument("-o", "--output", required=True, help=f"output {ext} file")
        s.add_argument("--float", action="store_true", help="export the float graph (no quantization)")
        s.add_argument("--step-ms", type=positive_float, help="streaming step model: this much audio per call, "
                       "explicit state in/out (causal models)")
        if name == "export":
            s.add_argument("--activations", default="auto", choices=["auto", "uint8", "int8"],
                           help="uint8: onnxruntime's fast path on x86; int8 (s8s8): ARM; "
                           "auto (default): by this machine's CPU. Same integer outputs either way")
        s.set_defaults(func=fn)

    s = sub.add_parser("import", help="a checkpoint trained elsewhere (reference FQSE .pth, asteroid "
                       "pytorch_model.bin) -> FQSE checkpoint; --ptq: int8 by post-training calibration")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True, help="output .pt checkpoint")
    s.add_argument("-y", "--yaml", help="the config it was trained with (checked against its shapes; optional)")
    s.add_argument("--ptq", choices=["minmax", "percentile", "mse"], help="float checkpoints: quantize by "
                   "post-training calibration with this range method (default percentile with --calibration)")
    s.add_argument("--calibration", help="calibration clips (any rate/length; default calibration_data/)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_import)

    s = sub.add_parser("parity", help="fake-quant torch vs deployed int8 models")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--audio", required=True)
    s.add_argument("--clean")
    s.add_argument("--onnx")
    s.add_argument("--tflite")
    s.add_argument("--float-checkpoint", help="a float model to compare as well")
    s.add_argument("--per-layer", action="store_true", help="ONNX: every quantized tensor against the fake-quant "
                   "model; names the first one more than 1 LSB off (and, with --tflite, against the integer reference). "
                   "TFLite: each op's kernel against the integer reference, fed the same int8 input")
    s.add_argument("--json")
    s.set_defaults(func=_parity)

    s = sub.add_parser("enhance", help="enhance a file with an int8 model (torch-free)")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--stream", action="store_true")
    s.add_argument("--hop-ms", type=positive_float, default=16.0)
    s.add_argument("--threads", type=positive_int, default=1)
    s.set_defaults(func=_enhance)

    s = sub.add_parser("stream", help="raw int16 mono PCM on stdin -> enhanced PCM on stdout")
    s.add_argument("--model", required=True)
    s.add_argument("--hop-ms", type=positive_float, default=16.0)
    s.add_argument("--threads", type=positive_int, default=1)
    s.set_defaults(func=_stream)

    s = sub.add_parser("bench", help="seconds per second of audio, size, peak memory")
    s.add_argument("--model", nargs="+")
    s.add_argument("--threads", type=positive_int, nargs="+", default=[1])
    s.add_argument("--seconds", type=positive_float, default=4.0)
    s.add_argument("--stream", action="store_true")
    s.add_argument("--hop-ms", type=positive_float, default=16.0)
    s.add_argument("--json")
    s.add_argument("--profile", action="store_true", help="ONNX models: onnxruntime's kernel time by layer kind and "
                   "operator (where the time goes; a float Conv in an int8 model shows here)")
    s.add_argument("--compare-onnx2tf", metavar="CHECKPOINT", help="convert CHECKPOINT with `fqse convert` and its "
                   "float network with onnx2tf's full-integer PTQ (the onnx2tf extra: `make onnx2tf`); speed, op "
                   "counts, parity with fake-quant and SI-SNR on samples/ side by side")
    s.add_argument("--out", help="--compare-onnx2tf: folder for onnx2tf_compare.json / .md and the compared models")
    s.set_defaults(func=_bench)

    s = sub.add_parser("golden", help="golden vectors (every tensor, bit-exact integer reference) for device bring-up")
    s.add_argument("--model", required=True, help="int8 .tflite model (whole-utterance or step)")
    s.add_argument("--audio", required=True)
    s.add_argument("-o", "--output", required=True, help="output folder (npy files + index.json)")
    s.add_argument("--seconds", type=float, default=2.0, help="at most this much of the audio")
    s.set_defaults(func=_golden)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded demo model and samples")
    s.add_argument("--out", default="artifacts/demo")
    s.set_defaults(func=_demo)

    s = sub.add_parser("report", help="quality table, sizes, speeds and the signature plot")
    s.add_argument("-y", "--yaml", required=True)
    s.add_argument("--checkpoints", nargs="+", required=True)
    s.add_argument("--out", default="artifacts/report")
    s.add_argument("--limit", type=positive_int, help="score this many test mixtures, spread evenly over the split")
    s.add_argument("--curve-limit", type=positive_int, help="re-mix this many of them at each input SNR for the "
                   "by-SNR tables and plots (default: all scored; the sweep costs 11 times the scoring)")
    s.add_argument("--baselines", action="store_true", help="also score RNNoise, NSNet2, DTLN and DeepFilterNet3 "
                   "(`make baselines`) and DNSMOS; SI-SNRi vs input SNR plot of all systems")
    s.add_argument("--score-cache", help="--baselines: folder keeping each baseline's scores per mixture, so the next "
                   "report reuses them (default $XDG_CACHE_HOME/fqse/scores)")
    s.add_argument("--rescore", action="store_true", help="--baselines: run and score the baselines again")
    s.set_defaults(func=_report)
    from fqse.boundary import add_common_options
    for s in sub.choices.values():
        add_common_options(s)
    return p


def main(argv: list[str] | None = None) -> int:
    from fqse import boundary
    args = build_parser().parse_args(argv)
    boundary.quiet_native_logs(args.verbose)
    return boundary.run(args.cmd, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
