"""The `strata` command: a registry of sub-commands, each an argparse parser and a function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_path
from .results import markdown_table
from .trust import TRUST_FLAG, check_configs_trusted

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None):
    def wrap(run: Callable[[argparse.Namespace], None]):
        COMMANDS[name] = (help, arguments, run)
        return run

    return wrap


@command("env", "versions of the stack and accelerators; checks the native libraries load (for bug reports)")
def environment(args: argparse.Namespace) -> None:
    from .environment import main as environment_main

    code = environment_main([])
    if code:
        sys.exit(code)


@command("upstreams", "list the upstream presets by family: layers, hidden size, frame rate and source")
def list_presets(args: argparse.Namespace) -> None:
    from upstream.registry import ENTRY_POINT_GROUP, load_entry_points, presets

    broken = load_entry_points()
    families: dict[str, list] = {}
    for name, p in sorted(presets().items()):
        known = p.num_layers > 0  # an entry point's bare factory: sizes known once built
        families.setdefault(p.family, []).append([
            name,
            p.num_layers - 1 if known else "?",
            p.num_layers if known else "?",
            p.hidden_size if known else "?",
            f"{p.frame_rate:g} Hz" if known else "?",
            p.source,
        ])  # fmt: skip
    for family, rows in sorted(families.items()):
        print(f"\n## {family}\n")
        print(markdown_table(["upstream", "layers", "hidden states", "hidden size", "frame rate", "source"], rows))
    print(
        "\nAlso: hf:<hub id or directory>, torchaudio:<bundle, builder or directory>, fairseq:<checkpoint.pt>, "
        "tera:<folder> (strata pretrain's TERA), package.module:factory (your own model), or a local directory. "
        f"Installed packages add presets through the {ENTRY_POINT_GROUP!r} entry points."
    )
    for _, why in sorted(broken.items()):
        print(f"note: {why}", file=sys.stderr)


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", default="tiny_hubert", help="preset or source (see `strata upstreams`)")
    parser.add_argument("--audio", help="a mono audio file; a one-second 440 Hz tone when omitted")


@command("inspect", "run one clip through an upstream and summarise every hidden layer", _inspect_arguments)
def inspect_layers(args: argparse.Namespace) -> None:
    import torch

    from recipes.audio import read_audio, tone
    from upstream import build_upstream

    upstream = build_upstream(args.upstream)
    wav = tone(sample_rate=upstream.sample_rate) if args.audio is None else read_audio(args.audio, upstream.sample_rate)
    with torch.no_grad():
        out = upstream(wav[None])
    source = args.audio or "a 1 s 440 Hz tone"
    print(
        f"{args.upstream}: {upstream.num_layers} hidden states of size {upstream.hidden_size}, "
        f"{upstream.frame_rate:g} frames/s; input {source} ({wav.numel() / upstream.sample_rate:.2f} s)"
    )
    rows, previous = [], None
    for i, state in enumerate(out.hidden_states):
        x = state[0, : int(out.lengths[0])]
        similarity = "" if previous is None else f"{torch.nn.functional.cosine_similarity(x, previous).mean():.3f}"
        rows.append([i, x.size(0), f"{x.mean():.3f}", f"{x.std():.3f}", f"{x.norm(dim=-1).mean():.2f}", similarity])
        previous = x
    print(markdown_table(["layer", "frames", "mean", "std", "mean frame norm", "cos to previous"], rows))


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", nargs="?", default="exp", help="folder searched for results.json files (default exp)")


@command("report", "a markdown table per task of every results.json below a folder", _report_arguments)
def report(args: argparse.Namespace) -> None:
    from .results import Results, find_results, format_metric, table_details, table_metrics

    by_task: dict[str, list[tuple[Path, Results]]] = {}
    for path in find_results([args.root]):
        results = Results.read(path)
        by_task.setdefault(results.task, []).append((path.parent, results))
    for task, runs in sorted(by_task.items()):
        metrics = table_metrics(results for _, results in runs)
        details = table_details(results for _, results in runs)
        rows = [
            [r.upstream, r.interface, r.trainable]
            + [format_metric(m, r.metrics.get(m)) for m in metrics]
            + [format_metric(d, r.details.get(d)) for d in details]
            + [format_metric("num_utterances", r.num_utterances), format_metric("seed", r.seed), run_dir]
            for run_dir, r in runs
        ]
        header = ["upstream", "interface", "trainable", *metrics, *details, "utterances", "seed", "run"]
        print(f"\n## {task}\n")
        print(markdown_table(header, rows))


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", required=True, help="preset or source (see `strata upstreams`)")
    parser.add_argument("--manifest", nargs="+", required=True, help="one or more JSONL manifests (train, valid, test)")
    parser.add_argument("--out", required=True, help="the cache folder, e.g. cache/hubert_base/")
    parser.add_argument("--layers", default="all", help="all (default) or hidden-state indices, e.g. 0,4,8")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32", "int8"],
                        help="stored type; int8: per-channel scales, a quarter of float32's disk")  # fmt: skip
    parser.add_argument("--batch-seconds", type=float,
                        help="padded audio per batch (default: 100 on a GPU, 20 on a CPU)")  # fmt: skip
    parser.add_argument("--shard-seconds", type=float, default=600.0, help="audio per shard file (default 600)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--num-workers", type=int, default=1, help="processes reading audio while the model runs (default 1; 0: none)"
    )
    parser.add_argument("--autocast", default="auto", choices=["auto", "bf16", "fp32"],
                        help="forward precision: auto (bf16 on a GPU, fp32 on a CPU), bf16 anywhere, fp32")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="run the upstream through torch.compile")


@command(
    "extract",
    "run a frozen upstream once and cache every layer for training and probing; under torchrun, N processes split "
    "the shards",
    _extract_arguments,
)
def extract_features(args: argparse.Namespace) -> None:
    import time

    from .cache import FeatureCache, extract
    from .distributed import ProcessGroup

    started = time.perf_counter()
    index = extract(args.upstream, args.manifest, args.out, args.layers, args.dtype, args.batch_seconds,
                    args.shard_seconds, args.device, num_workers=args.num_workers, autocast=args.autocast,
                    compile=args.compile)  # fmt: skip
    elapsed = time.perf_counter() - started
    if not ProcessGroup.from_env().is_main:
        return  # under torchrun: the first process reports for all
    cache = FeatureCache(args.out)
    layers = "all" if len(index.layers) == index.num_layers else ",".join(map(str, index.layers))
    print(
        f"cached {len(index.utterances)} utterances ({index.seconds / 3600:.2f} h) of {args.upstream}, layers "
        f"{layers} of {index.num_layers}, {args.dtype}, "
        f"{cache.size_bytes() / 2**30:.2f} GiB in {len(index.shards)} shard(s), {elapsed:.0f} s "
        f"({index.seconds / max(elapsed, 1e-9):.0f} audio-s/s) -> {args.out}\n"
        f"train from it with --data.features {args.out}"
    )


def _probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="a `strata extract` folder holding train and test utterances")
    parser.add_argument("--task", help="emotion, speaker_id, speaker_verification or asd: the label the task predicts")
    parser.add_argument("--label", help="probe this manifest field instead of the task's label")
    parser.add_argument("--frame-labels", help="an alignment field ([start, end, label] segments): frame-level probe")
    parser.add_argument("--train", required=True, help="manifest the probes train on")
    parser.add_argument("--test", required=True, help="manifest the probes are scored on")
    parser.add_argument("--layers", default="all", help="all (default) or e.g. 0,4,8")
    parser.add_argument("--probe", default="linear", help="linear (default) or mlp")
    parser.add_argument("--max-frames", type=int, default=20000, help="frames sampled per split (frame-level probe)")
    parser.add_argument("--out", required=True, help="folder for probe.csv and probe.png / .pdf")


@command("probe", "train a probe per layer on cached features: which layers hold the label", _probe_arguments)
def probe_layers(args: argparse.Namespace) -> None:
    from .analysis.commands import probe

    if not (args.task or args.label or args.frame_labels):
        raise ValueError("say what to probe: --task NAME, --label FIELD or --frame-labels FIELD")
    written = probe(args.cache, args.train, args.test, args.out, args.task, args.label, args.frame_labels,
                    args.layers, args.probe, args.max_frames)  # fmt: skip
    print(Path(written[0]).read_text(encoding="utf-8").strip())
    print("wrote " + ", ".join(map(str, written)))


def _analyze_arguments(parser: argparse.ArgumentParser) -> None:
    analyses = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    cca = analyses.add_parser("cca", help="projection-weighted CCA of each layer with log-mel (or the first layer)")
    cca.add_argument("--reference", default="mel", choices=["mel", "layer0"], help="what each layer is compared with")
    cca.add_argument("--manifest", nargs="+", help="utterances to use (default: those the cache was extracted from)")
    mi = analyses.add_parser("mi", help="k-means clusters of each layer's frames vs labels: normalised MI")
    mi.add_argument("--labels", required=True, help="an utterance field (speaker, emotion) or an alignment field")
    mi.add_argument("--fit", help="manifest the clusters are fitted on (default: half the cache's utterances)")
    mi.add_argument("--eval", help="manifest the NMI is measured on (default: the other half)")
    mi.add_argument("--clusters", type=int, default=100, help="k of k-means (default 100)")
    for sub in (cca, mi):
        sub.add_argument("--cache", required=True, help="a `strata extract` folder")
        sub.add_argument("--layers", default="all", help="all (default) or e.g. 0,4,8")
        sub.add_argument("--max-frames", type=int, default=20000, help="frames sampled (default 20000)")
        sub.add_argument("--out", required=True, help="folder for the CSV and the figure (PNG, PDF)")


@command("analyze", "layer analyses on cached features: `analyze cca` and `analyze mi`", _analyze_arguments)
def analyze(args: argparse.Namespace) -> None:
    from .analysis.commands import cca, mutual_information

    if args.analysis == "cca":
        written = cca(args.cache, args.out, args.reference, args.manifest, args.layers, args.max_frames)
    else:
        written = mutual_information(args.cache, args.out, args.labels, args.fit, args.eval, args.layers,
                                     args.clusters, args.max_frames)  # fmt: skip
    print(Path(written[0]).read_text(encoding="utf-8").strip())
    print("wrote " + ", ".join(map(str, written)))


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (or checkpoints) trained with the weighted_sum interface")
    parser.add_argument("--out", help="folder for weights.csv and weights.png / .pdf (default: the first run)")


@command("weights", "learned weighted-sum layer weights of runs: bars, or a heat map for several", _weights_arguments)
def plot_weights(args: argparse.Namespace) -> None:
    from .analysis.commands import weights

    written = weights(args.runs, args.out or args.runs[0])
    print(Path(written[0]).read_text(encoding="utf-8").strip())
    print("wrote " + ", ".join(map(str, written)))


def _run_dir_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="the task's name, e.g. emotion (the folder below --exp_dir)")
    parser.add_argument("--upstream", required=True, help="preset or source, as given to --model.upstream.name")
    parser.add_argument("--interface", required=True, help="as given to --model.interface.name")
    parser.add_argument("--trainable", default="frozen", help="frozen (default), all or top:K")
    parser.add_argument("--tag", default="", help="appended to the name: a variant of the same configuration")
    parser.add_argument("--exp-dir", "--exp_dir", default="exp", help="folder holding every task's runs (default exp)")


@command("run-dir", "print a configuration's run folder, as `strata fit` names it (for recipes)", _run_dir_arguments)
def print_run_dir(args: argparse.Namespace) -> None:
    from .runs import run_dir

    print(run_dir(args.task, args.upstream, args.interface, args.trainable, args.tag, args.exp_dir))


def _speed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("upstreams", nargs="+", help="upstream names or sources; ratios are against the first")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the longest clip; the others down to half")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards; the median is shown (default 5)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


@command("speed", "time upstreams' forward on one batch side by side: parameters, ms, real-time factor, ratios",
         _speed_arguments)  # fmt: skip
def speed(args: argparse.Namespace) -> None:
    import torch

    from .speed import speed_table, time_upstream

    if args.threads:
        torch.set_num_threads(args.threads)
    speeds = []
    for name in args.upstreams:
        speeds.append(time_upstream(name, args.batch_size, args.seconds, args.repeats, args.device))
        print(f"{name}: {speeds[-1].seconds * 1000:.1f} ms", file=sys.stderr)
    print(f"batch of {args.batch_size} clips, {args.seconds / 2:g}-{args.seconds:g} s, median of {args.repeats}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(markdown_table(*speed_table(speeds)))


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (with results.json) or folders searched for them")
    parser.add_argument("--out", required=True, help="folder for compare.md and compare.png")


@command("compare", "compare runs: a markdown table (best in bold) and grouped bars per task", _compare_arguments)
def compare_runs(args: argparse.Namespace) -> None:
    from .compare import compare

    written = compare(args.runs, args.out)
    print(written[0].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(map(str, written)))


def _tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="JSONL manifest whose `text` field is the training text")
    parser.add_argument("--type", default="char", choices=["char", "bpe", "unigram"], help="token type (default char)")
    parser.add_argument("--vocab-size", type=int, help="number of tokens, blank and unknown included (bpe, unigram)")
    parser.add_argument("--normalizer", default="letters_apostrophes", help="text normalisation (default: upper-case, "
                        "letters, apostrophes and spaces)")  # fmt: skip
    parser.add_argument("--out", required=True, help="the sentencepiece model file to write, e.g. tok.model")


@command("tokenizer", "train a sentencepiece tokenizer for CTC (blank = 0) on a manifest's text", _tokenizer_arguments)
def tokenizer(args: argparse.Namespace) -> None:
    from .tokenizer import train_from_manifest

    trained = train_from_manifest(
        args.manifest, args.out, model_type=args.type, vocab_size=args.vocab_size, normalizer=args.normalizer
    )
    print(f"wrote a {args.type} tokenizer of {trained.vocab_size} tokens (blank = 0) to {args.out}")


def _embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a checkpoint of `strata fit` (e.g. <run>/checkpoints/best.ckpt)")
    parser.add_argument("--manifest", required=True, help="JSONL manifest of the utterances to embed")
    parser.add_argument("--out", required=True, help="output .npz, one array per utterance id")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per batch (default 60)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")


@command(
    "embed", "embed every utterance of a manifest with a trained run's head (speaker embeddings, ...)", _embed_arguments
)
def embed(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .cache import resolve_device
    from .data import AudioDataset, BucketBatchSampler, PadCollate, read_manifest
    from .module import SSLTaskModule

    device = resolve_device(args.device)
    module = SSLTaskModule.from_checkpoint(args.ckpt).to(device)
    manifest = read_manifest(args.manifest)
    dataset = AudioDataset(
        manifest, module.upstream.sample_rate, min_samples=getattr(module.upstream, "min_samples", 0)
    )
    sampler = BucketBatchSampler(manifest.durations, args.batch_seconds, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=PadCollate(), num_workers=2)
    embeddings: dict[str, np.ndarray] = {}
    with torch.inference_mode(), tqdm(total=len(manifest), unit="utt", desc="embedding") as progress:
        for batch in loader:
            vectors = module.embed(batch["wavs"].to(device), batch["wav_lengths"].to(device)).float().cpu().numpy()
            embeddings.update(zip(batch["ids"], vectors, strict=True))
            progress.update(len(batch["ids"]))
    out = Path(args.out)
    with atomic_path(out) as partial, open(partial, "wb") as handle:  # a handle: np.savez would add .npz to a name
        np.savez(handle, **embeddings)
    size = next(iter(embeddings.values())).shape[0]
    print(f"wrote {len(embeddings)} embeddings of size {size} from {args.ckpt} to {out}")


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run folder, a checkpoint, a `strata export` folder, or hf:<hub id>")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="let the model name classes outside strata (runs their code: only for files you trust)",
    )


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _model_argument(parser)
    parser.add_argument("audio", nargs="*", help="audio files (any sample rate: resampled)")
    parser.add_argument("--manifest", help="a JSONL manifest of the utterances instead of files")
    parser.add_argument("--out", help="write the JSON lines here (default: standard output)")
    parser.add_argument("--section", help="asd, for files: the clips' machine/section, e.g. fan/00 (default: the "
                        "model's only one)")  # fmt: skip
    parser.add_argument("--batch-seconds", type=float,
                        help="padded audio per batch (default: as the model's test batched, else 120)")  # fmt: skip


def _load_for_command(args: argparse.Namespace):
    from .cache import resolve_device
    from .inference import load_model

    return load_model(args.model, device=resolve_device(args.device), trust_code=args.trust_code)


@command("predict", "run a trained model on new audio: one JSON line per input (label, text, embedding, score)",
         _predict_arguments)  # fmt: skip
def predict(args: argparse.Namespace) -> None:
    import json

    from .data import write_jsonl
    from .inference import files_manifest, read_prediction_manifest

    if bool(args.audio) == bool(args.manifest):
        raise ValueError("give audio files or --manifest (one of them)")
    model = _load_for_command(args)
    if args.manifest:
        manifest = read_prediction_manifest(args.manifest, model.task)
    else:
        fields = {}
        if model.task.prediction_fields:  # ASD: the clips' machine and section
            sections = sorted((model.calibration.values.get("thresholds") or {}).keys())
            section = args.section or (sections[0] if len(sections) == 1 else None)
            if section is None or "/" not in section:
                raise ValueError(f"--section machine/section is needed for asd files; the model knows {sections}")
            fields = dict(zip(("machine", "section"), section.split("/", 1), strict=True))
        manifest = files_manifest(args.audio, fields)
    answers = model.predict_manifest(manifest, args.batch_seconds, progress=args.out is not None)
    if args.out is None:
        for answer in answers:
            sys.stdout.write(json.dumps(answer) + "\n")
        return
    out = write_jsonl(args.out, list(answers))
    print(f"wrote {len(manifest)} predictions of {args.model} to {out}")


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    _model_argument(parser)
    parser.add_argument("first", help="an audio file")
    parser.add_argument("second", help="another audio file")


@command("verify", "speaker verification of two files: the score and the decision at the test's EER threshold",
         _verify_arguments)  # fmt: skip
def verify(args: argparse.Namespace) -> None:
    result = _load_for_command(args).verify(args.first, args.second)
    decision = "same speaker" if result["same_speaker"] else "different speakers"
    print(f"score {result['score']:.4f} (threshold {result['threshold']:.4f}): {decision}")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder of `strata fit` (tested: its thresholds and figures go along)")
    parser.add_argument("--out", required=True, help="the export folder to write")
    parser.add_argument("--ckpt", help="best, last, averaged (of --average_best's top checkpoints) or a "
                        "path (default: the checkpoint the last test used, else best)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository")
    parser.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    parser.add_argument("--trust-code", action="store_true", help="the run names classes outside strata")


@command("export", "a trained run as a self-contained model folder (hub layout, model card) to share or predict with",
         _export_arguments)  # fmt: skip
def export(args: argparse.Namespace) -> None:
    from .export import export_run, push_to_hub

    out = export_run(args.run, args.out, args.ckpt, overwrite=args.force, trust_code=args.trust_code)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.run} to {out} ({size / 2**20:.2f} MiB: {files})")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")


def _manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the JSONL manifest to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="every audio file below this folder (recursive)")
    source.add_argument("--csv", help="a CSV with a header: an audio column, other columns become fields")
    source.add_argument("--kaldi", help="a Kaldi data dir: wav.scp [segments] [utt2spk -> speaker] [text -> text]")
    parser.add_argument("--pattern", help="--folder: regex the path relative to the folder must match (fullmatch); "
                        "named groups become fields, a group named id sets the id")  # fmt: skip
    parser.add_argument("--ext", default="wav,flac", help="--folder: audio file extensions (default wav,flac)")
    parser.add_argument("--audio-column", default="audio", help="--csv: the column of audio paths (default audio)")
    parser.add_argument("--id-column", default="id", help="--csv: the id column (default id; else the audio path)")
    parser.add_argument("--root", help="--csv, --kaldi: folder relative audio paths are resolved against "
                        "(default: the CSV's folder; the current folder for Kaldi, as in its recipes)")  # fmt: skip


@command("manifest", "write a JSONL manifest from a folder of audio, a CSV or a Kaldi data dir", _manifest_arguments)
def manifest(args: argparse.Namespace) -> None:
    import warnings

    from .data import write_jsonl
    from .manifests import from_csv, from_folder, from_kaldi, summarize

    misplaced = {"--pattern": args.pattern and not args.folder, "--root": args.root and args.folder}
    for option, wrong in misplaced.items():
        if wrong:
            raise ValueError(f"{option} does not apply to {'--folder' if args.folder else '--csv or --kaldi'}")
    if args.folder:
        with warnings.catch_warnings(record=True) as notes:  # files the pattern leaves out: a plain note line
            warnings.simplefilter("always")
            entries = from_folder(args.folder, args.pattern, args.ext.split(","))
        for note in notes:
            print(f"note: {note.message}", file=sys.stderr)
    elif args.csv:
        entries = from_csv(args.csv, args.audio_column, args.id_column, args.root)
    else:
        entries = from_kaldi(args.kaldi, args.root or ".")
    out = write_jsonl(args.out, entries)
    print(f"wrote {out}: {summarize(entries)}")


# Handled by LightningCLI (recipes.lightning_cli), which has its own parser; listed here for `strata --help`.
LIGHTNING_COMMANDS = {
    "fit": "train a task from a YAML config (strata fit --config recipes/configs/emotion.yaml --data.train ...)",
    "validate": "evaluate a run's checkpoint on --data.valid",
    "test": "evaluate a run's checkpoint on --data.test and write results.json",
    "pretrain": "pre-train an upstream, HuBERT-style or TERA (--objective hubert|tera, or a config's objective: "
    "strata pretrain --config recipes/configs/pretrain_tiny.yaml --data.train M.jsonl --trainer.default_root_dir D "
    "-> D/upstream, loadable as hf:D/upstream; pretrain_tera_tiny.yaml -> tera:D/upstream)",
    "distill": "distil an upstream into a shallow student, DistilHuBERT-style (strata distill --config "
    "recipes/configs/distill_tiny.yaml --model.teacher hf:T --data.train M.jsonl -> <run>/upstream, loadable as "
    "hf:<run>/upstream)",
}


# The LightningCLI commands that only fit, each with its own module and data module: name -> runner in lightning_cli.
FIT_COMMANDS = {"pretrain": "run_pretrain", "distill": "run_distill"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata", description="speech SSL representations: upstreams, probes, recipes"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=help, add_help=False)
    for name, (help, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help, description=help))
    return parser


def _one_line(error: BaseException) -> str:
    """The message without a DataLoader worker's re-raised traceback: its last line is the original error."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    # jsonargparse puts the class's own error on an indented line below its "Problem with ..." line.
    return " ".join(line.strip() for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in {**FIT_COMMANDS, **LIGHTNING_COMMANDS}:
        # Configs may name classes to import: strata's, Lightning's and torch's only, unless --trust-code.
        trust_code = TRUST_FLAG in given
        given = [arg for arg in given if arg != TRUST_FLAG]
    if given and given[0] in FIT_COMMANDS:
        name = given[0]

        def run_command() -> None:
            from . import lightning_cli

            check_configs_trusted(given[1:], trust_code)
            getattr(lightning_cli, FIT_COMMANDS[name])(given[1:])
    elif given and given[0] in LIGHTNING_COMMANDS:
        name = given[0]

        def run_command() -> None:
            from .lightning_cli import run

            check_configs_trusted(given[1:], trust_code)
            run(given)  # LightningCLI parses its own arguments
    else:
        args = build_parser().parse_args(given)
        name = args.command

        def run_command() -> None:
            COMMANDS[name][2](args)

    user_errors: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, FileExistsError)
    # `strata env` must answer when torch or torchaudio cannot be imported; `strata run-dir`, asked by the recipes
    # once a run, needs neither and should not wait for them.
    if name not in ("env", "run-dir"):
        from upstream import UpstreamLoadError

        from .distributed import PeerFailed

        user_errors += (UpstreamLoadError, PeerFailed)  # PeerFailed: another process's error, reported by it
    try:
        run_command()
    except user_errors as error:
        # Library code raises with the what and where; the command line shows just that, on one line.
        print(f"strata {name}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
