"""Sign production sampling: sequences/s of PoseVQ-Diffusion (T = 100, 20 and 10 steps), PoseVQ-MP and
PoseVQ-AR (KV cache) at 64, 128 and 256 frames, and their back-translation WER on SynthSign.

    python benchmarks/sampling.py [--quick] [--compile] [--batch N]
        [--diffusion CKPT] [--mp CKPT] [--ar CKPT] [--back-translator CKPT]

Timing. Each generator is built from its demo YAML's ``model.init_args`` with random weights (how
fast tokens are sampled does not depend on what the weights learnt), over a random Pose-VQVAE of
``experiments/demo/pose_vqvae.yaml``'s size. A run is what ``PoseVQDiffusion.generate`` does after
the length head: the gloss encoder, then the method's sampler through ``decode_length_candidates``
with one fixed total length, so every method decodes the same frames × parts tokens. VQ-VAE
decoding is the same for every method and timed apart. Seconds are the median wall time of a few
runs with torch on ``--threads`` (default 2, as docs/performance.md's times were measured; on a
box other jobs keep busy, 2 threads contend with them and 1 gives steadier numbers), at batch 1
and ``--batch``.
``--compile`` adds rows with the CodeUnet trunk ``torch.compile``d (diffusion and MP;
``CodeUnet.compile_trunk``), after checking it returns the eager logits; the compile time is
recorded, and a compile failure is printed and recorded, not hidden.

WER. For each checkpoint passed, ``lightning test`` runs on the SynthSign test split of the data
module saved in the checkpoint (the demo YAML's if none was saved) with ``back_translator_ckpt``
set, so ``ProductionEvaluator`` scores exactly what the CLI would; diffusion at 10, 20 and T steps.

Writes ``benchmarks/results/sampling.json`` and prints both tables with the machine's load.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, median_time, print_table, timed, write_results  # noqa: E402
from lightning_modules.checkpoint_io import load_checkpoint_file, load_lightning_module  # noqa: E402
from lightning_modules.posevq_diffusion import METHOD_NAMES, PoseVQDiffusion  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = {"diffusion": "posevq_diffusion.yaml", "mask_predict": "posevq_mp.yaml",
                "autoregressive": "posevq_ar.yaml"}
CHECKPOINT_FLAGS = {"diffusion": "diffusion", "mask_predict": "mp", "autoregressive": "ar"}
FRAMES = (64, 128, 256)  # the sequence lengths docs/performance.md reports
THREADS = 2  # docs/performance.md's times were measured on 2 CPU threads
REPEATS = 3
DIFFUSION_STEPS = (None, 20, 10)  # denoising steps: all T (the paper's sampler), then fast sampling
GLOSS_FRAMES = 13  # frames per gloss in the timing inputs: SynthSign's test-split mean (53 frames / 4.1 glosses)

QUICK_FRAMES, QUICK_BATCH = (8, 16), 2
QUICK_NETWORK = dict(d_model=32, heads=2, encoder_depth=1, num_levels=1, blocks_per_level=1, middle_blocks=1,
                   depth=1, ff_mult=2)
QUICK_VQVAE = dict(hidden=16, layers=1, heads=2, codebook_size=16, spl_hidden=8)


@dataclass(frozen=True)
class Setting:
    """One row of the tables: a generator method and, for diffusion, its denoising steps."""

    method: str  # PoseVQDiffusion.method
    sample_steps: int | None = None  # diffusion only; None = all T

    def name(self, model: PoseVQDiffusion) -> str:
        if self.method == "diffusion":
            steps = len(model.code_generator.diffusion.timesteps(self.sample_steps))
            return f"{METHOD_NAMES['diffusion']} {steps} steps" + (" (T)" if self.sample_steps is None else "")
        if self.method == "mask_predict":
            return f"{METHOD_NAMES['mask_predict']} {model.code_generator.mask_predict.iterations} it."
        return f"{METHOD_NAMES['autoregressive']} (KV cache)"

    def overrides(self, diffusion: dict) -> dict:
        """PoseVQDiffusion arguments replacing those of a YAML or checkpoint whose diffusion settings are ``diffusion``."""
        return {"diffusion": diffusion | {"sample_steps": self.sample_steps}} if self.method == "diffusion" else {}


SETTINGS = (*(Setting("diffusion", s) for s in DIFFUSION_STEPS), Setting("mask_predict"), Setting("autoregressive"))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # common.parse_args takes boolean flags only; this script also needs paths and a batch size
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and sizes, one repeat: checks the script end to end in seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--compile", action="store_true", help="also time the CodeUnet under torch.compile")
    parser.add_argument("--batch", type=int, default=8, help="the batched setting's batch size (default 8)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads while timing (default {THREADS}, as in docs/performance.md); --quick keeps the caller's")
    for method, flag in CHECKPOINT_FLAGS.items():
        parser.add_argument(f"--{flag}", type=Path, metavar="CKPT", help=f"trained {METHOD_NAMES[method]} checkpoint")
    parser.add_argument("--back-translator", type=Path, metavar="CKPT",
                        help="BackTranslator checkpoint scoring the generated poses (needed with any CKPT)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        parser.error(f"--batch and --threads must be >= 1, got {args.batch}, {args.threads}")
    checkpoints = [getattr(args, flag) for flag in CHECKPOINT_FLAGS.values()]
    if any(checkpoints) and args.back_translator is None:
        parser.error("--diffusion/--mp/--ar need --back-translator CKPT to compute the WER")
    for path in [*checkpoints, args.back_translator]:
        if path is not None and not path.is_file():
            parser.error(f"checkpoint {str(path)!r}: no such file")
    return args


def demo_config(method: str) -> dict:
    """The parsed demo YAML of a generator method."""
    return yaml.safe_load((REPO / "experiments" / "demo" / DEMO_CONFIGS[method]).read_text())


# ---- timing ---------------------------------------------------------------------------------------


def random_vqvae_checkpoint(path: Path, quick: bool) -> str:
    """Save an untrained Pose-VQVAE of the demo size (tiny with ``quick``) where ``PoseVQDiffusion`` can read it."""
    from lightning.pytorch import Trainer

    from lightning_modules.pose_vqvae import PoseVQVAE

    init_args = yaml.safe_load((REPO / "experiments/demo/pose_vqvae.yaml").read_text())["model"]["init_args"]
    vqvae = PoseVQVAE(**(init_args | QUICK_VQVAE if quick else init_args))
    trainer = Trainer(logger=False, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=path.parent)
    trainer.strategy.connect(vqvae)  # a checkpoint of an unfitted module, written as the CLI writes one
    trainer.save_checkpoint(path)
    return str(path)


def random_generator(setting: Setting, vqvae_ckpt: str, quick: bool) -> PoseVQDiffusion:
    """The setting's generator built from its demo YAML, untrained, in eval mode."""
    init_args = demo_config(setting.method)["model"]["init_args"]
    init_args |= setting.overrides(init_args["diffusion"]) | {"vqvae_ckpt": vqvae_ckpt}
    if quick:
        init_args["network"] = init_args["network"] | QUICK_NETWORK
    torch.manual_seed(0)
    return PoseVQDiffusion(**init_args).eval()


def timing_inputs(model: PoseVQDiffusion, frames: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random glosses (B, G), their mask and a fixed total length (B, 1) of ``frames``."""
    num_glosses = max(1, round(frames / GLOSS_FRAMES))
    first = len(model.gloss_vocab.SPECIALS)  # real glosses follow the special symbols
    gloss_ids = torch.randint(first, len(model.gloss_vocab), (batch, num_glosses))
    return gloss_ids, torch.ones_like(gloss_ids, dtype=torch.bool), torch.full((batch, 1), frames)


@torch.no_grad()
def sample_codes(model: PoseVQDiffusion, gloss_ids: torch.Tensor, gloss_mask: torch.Tensor,
                 totals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate`` from the gloss encoder to the codes, with the total lengths (B, k) given:
    codes (B, T, P), frame_mask (B, T)."""
    codes, frame_mask, _ = model.sample_codes(model.code_generator.encode(gloss_ids, gloss_mask), totals)
    return codes, frame_mask


def compile_denoiser(model: PoseVQDiffusion, frames: int) -> None:
    """``torch.compile`` the CodeUnet trunk in place and check it still returns the eager logits."""
    gloss_ids, gloss_mask, _ = timing_inputs(model, frames, 2)
    num_tokens = frames * model.num_parts
    x_t = torch.randint(0, model.vqvae.num_codes + 1, (2, num_tokens))  # codes and [MASK]
    token_mask = torch.ones(2, num_tokens, dtype=torch.bool)
    t = torch.tensor([model.hparams.diffusion["num_timesteps"], 1])
    denoiser = model.code_generator.denoiser
    with torch.no_grad():
        cond = model.code_generator.encode(gloss_ids, gloss_mask).cond
        eager = denoiser(x_t, t, token_mask, **cond)
        denoiser.compile_trunk()
        compiled = denoiser(x_t, t, token_mask, **cond)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def time_setting(model: PoseVQDiffusion, name: str, frames_list: Sequence[int], batches: Sequence[int],
                 repeats: int, warmup: int, compiled: bool) -> list[dict]:
    """One row per (frames, batch). With ``compiled`` the first call (compilation) is timed apart."""
    rows = []
    for frames in frames_list:
        for batch in batches:
            torch.manual_seed(0)
            gloss_ids, gloss_mask, totals = timing_inputs(model, frames, batch)
            run = lambda: sample_codes(model, gloss_ids, gloss_mask, totals)  # noqa: E731
            first_call = timed(run)[0] if compiled else None
            seconds = median_time(run, repeats, 0 if compiled else warmup) / batch
            print(f"  {frames} frames, batch {batch}: {seconds:.4f} s/sequence", flush=True)  # partial runs tell too
            rows.append({"setting": name, "method": model.hparams.method, "compiled": compiled,
                         "steps": model.code_generator.steps(totals[:, 0] * model.num_parts), "frames": frames,
                         "batch": batch, "seconds_per_sequence": seconds, "sequences_per_s": 1.0 / seconds,
                         "first_call_s": first_call})
    return rows


def time_vq_decoding(model: PoseVQDiffusion, frames_list: Sequence[int], batches: Sequence[int],
                     repeats: int, warmup: int) -> dict[tuple[int, int], float]:
    """(frames, batch) -> seconds per sequence of Pose-VQVAE decoding (codes -> poses)."""
    out = {}
    for frames in frames_list:
        for batch in batches:
            codes = torch.randint(0, model.vqvae.num_codes, (batch, frames, model.num_parts))
            mask = torch.ones(batch, frames, dtype=torch.bool)
            with torch.no_grad():
                out[frames, batch] = median_time(lambda: model.vqvae.decode(codes, mask), repeats, warmup) / batch
    return out


def timing_rows(args: argparse.Namespace, work_dir: Path) -> tuple[list[dict], dict[str, float], str | None]:
    """Every setting at every size (and compiled CodeUnet rows with ``--compile``), the seconds
    each compilation took (setting -> s) and the compile failure message, if any."""
    frames_list, batch = (QUICK_FRAMES, QUICK_BATCH) if args.quick else (FRAMES, args.batch)
    batches = sorted({1, batch})
    repeats, warmup = (1, 0) if args.quick else (REPEATS, 1)
    vqvae_ckpt = random_vqvae_checkpoint(work_dir / "vqvae.ckpt", args.quick)
    rows, compile_seconds, compile_error = [], {}, None
    models = [(setting, random_generator(setting, vqvae_ckpt, args.quick)) for setting in SETTINGS]
    for setting, model in models:
        print(f"timing {setting.name(model)} ...", flush=True)
        rows += time_setting(model, setting.name(model), frames_list, batches, repeats, warmup, compiled=False)
    if args.compile:
        for setting, model in models:
            if setting.method == "autoregressive" or compile_error is not None:
                continue  # the AR decoder has no CodeUnet (and steps one token at a time)
            print(f"timing {setting.name(model)} with torch.compile ...", flush=True)
            try:
                compile_seconds[setting.name(model)] = timed(lambda: compile_denoiser(model, frames_list[0]))[0]
                rows += time_setting(model, setting.name(model) + " +compile", frames_list, batches, repeats,
                                     warmup, compiled=True)
            except Exception as error:  # e.g. no C++ toolchain for inductor: report it, keep the eager rows
                compile_error = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                print(f"torch.compile skipped: {compile_error}", flush=True)
    decoding = time_vq_decoding(models[0][1], frames_list, batches, repeats, warmup)
    ar = {(r["frames"], r["batch"]): r["sequences_per_s"] for r in rows if r["method"] == "autoregressive"}
    for row in rows:
        key = (row["frames"], row["batch"])
        row["speedup_vs_ar"] = row["sequences_per_s"] / ar[key]
        row["vq_decode_s_per_sequence"] = decoding[key]
    return rows, compile_seconds, compile_error


# ---- back-translation WER -------------------------------------------------------------------------


def datamodule_for(checkpoint: dict, path: Path, method: str):
    """The checkpoint's own data module (saved by the CLI), else the demo YAML's; no worker processes."""
    from omegaconf import OmegaConf

    from datamodules.production import GlossToPoseDataModule

    init_args = checkpoint.get("datamodule_hyper_parameters")
    if init_args is None:
        config = OmegaConf.create(demo_config(method))
        init_args = OmegaConf.to_container(config.data.init_args, resolve=True)
    elif init_args.get("_class_path", "datamodules.production.GlossToPoseDataModule") != \
            "datamodules.production.GlossToPoseDataModule":
        raise ValueError(f"{path}: saved data module {init_args['_class_path']!r} is not GlossToPoseDataModule")
    init_args = {k: v for k, v in init_args.items() if not k.startswith("_")}
    return GlossToPoseDataModule(**(init_args | {"num_workers": 0}))


def load_checkpoints(args: argparse.Namespace) -> dict[str, tuple[Path, dict]]:
    """method -> (path, checkpoint dict) for the checkpoints passed, each checked to hold that method
    (before any timing, so a wrong file fails in a second, not after the timing part)."""
    checkpoints = {}
    for method, flag in CHECKPOINT_FLAGS.items():
        path = getattr(args, flag)
        if path is None:
            continue
        checkpoint = load_checkpoint_file(path, weights_only=True)  # data only: benchmarks are run on downloaded checkpoints too
        saved = checkpoint.get("hyper_parameters", {}).get("method")
        if saved != method:
            raise ValueError(f"{path}: holds a PoseVQDiffusion method {saved!r} but was passed as --{flag} ({method})")
        checkpoints[method] = (path, checkpoint)
    return checkpoints


def back_translation_row(path: Path, checkpoint: dict, setting: Setting, back_translator: Path,
                         report_dir: Path) -> dict:
    """``lightning test`` of one checkpoint under one sampler setting: WER, BLEU-4, DTW-MJE, GT WER."""
    from lightning.pytorch import Trainer

    method = setting.method
    model = load_lightning_module(
        PoseVQDiffusion, path, map_location="cpu", back_translator_ckpt=str(back_translator), report_dir=str(report_dir),
        **setting.overrides(checkpoint["hyper_parameters"]["diffusion"]))
    name = setting.name(model)
    print(f"back-translating {name} ({path}) ...", flush=True)
    torch.manual_seed(0)  # the samplers draw from the global generator
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        metrics = trainer.test(model, datamodule=datamodule_for(checkpoint, path, method), verbose=False)[0]
    return {"setting": name, "method": method, "checkpoint": str(path),
            **{key: float(metrics[f"test/{key}"]) for key in
               ("wer", "bleu4", "dtw_mje", "gt_wer", "gt_bleu4", "steps", "seconds_per_sequence", "num_samples")},
            "report": str(report_dir / "report.md")}


def back_translation_rows(checkpoints: dict[str, tuple[Path, dict]], back_translator: Path,
                          out_dir: Path) -> list[dict]:
    """One row per checkpoint and sampler setting; reports in ``<out>/sampling_reports/<flag>_<steps>``."""
    rows = []
    for setting in (s for s in SETTINGS if s.method in checkpoints):
        path, checkpoint = checkpoints[setting.method]
        report_dir = out_dir / "sampling_reports" / f"{CHECKPOINT_FLAGS[setting.method]}_{setting.sample_steps or 'T'}"
        rows.append(back_translation_row(path, checkpoint, setting, back_translator, report_dir))
    return rows


# ---- main -----------------------------------------------------------------------------------------


def goal(timing: list[dict], wer: list[dict]) -> dict:
    """The goal at the longest sequences, batch 1: fast diffusion >= 5x AR, WER no worse."""
    longest = max(r["frames"] for r in timing)
    fastest = min(DIFFUSION_STEPS, key=lambda s: s or float("inf"))
    fast = [r for r in timing if r["method"] == "diffusion" and r["frames"] == longest and r["batch"] == 1
            and r["setting"].startswith(f"{METHOD_NAMES['diffusion']} {fastest} steps")]
    wers = {(r["method"], r["steps"]): r["wer"] for r in wer}
    ar_wer = next((w for (method, _), w in wers.items() if method == "autoregressive"), None)
    fast_wer = wers.get(("diffusion", float(fastest)))
    return {"frames": longest, "steps": fastest, "speedup_vs_ar": {r["setting"]: r["speedup_vs_ar"] for r in fast},
            "speedup_target": 5.0, "wer": fast_wer, "ar_wer": ar_wer,
            "wer_no_worse": None if fast_wer is None or ar_wer is None else fast_wer <= ar_wer}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    checkpoints = load_checkpoints(args)
    threads = torch.get_num_threads()
    if not args.quick:
        torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as work_dir:
            timing, compile_seconds, compile_error = timing_rows(args, Path(work_dir))
        timing_threads = torch.get_num_threads()
        wer = back_translation_rows(checkpoints, args.back_translator, args.out)
    finally:
        torch.set_num_threads(threads)  # callers (the tests) keep their own setting
    print_table(f"\nToken sampling, torch threads {timing_threads} "
                "(VQ decoding apart; x AR = sequences/s over AR's)",
                timing, [("setting", "setting", "s"), ("frames", "frames", "d"), ("batch", "batch", "d"),
                         ("steps", "steps", "d"), ("seconds_per_sequence", "s/seq", ".4f"),
                         ("sequences_per_s", "seq/s", ".2f"), ("speedup_vs_ar", "x AR", ".2f"),
                         ("vq_decode_s_per_sequence", "VQ dec s/seq", ".4f")])
    if compile_error is not None:
        print(f"torch.compile rows missing: {compile_error}")
    if wer:
        print_table("\nBack-translation on the test split (scores 0-100; GT = ground-truth poses)", wer,
                    [("setting", "setting", "s"), ("steps", "steps", "g"), ("wer", "WER", ".2f"),
                     ("bleu4", "BLEU-4", ".2f"), ("dtw_mje", "DTW-MJE", ".3f"), ("gt_wer", "GT WER", ".2f"),
                     ("seconds_per_sequence", "s/seq", ".3g"), ("num_samples", "samples", "g")])
    result = {"quick": args.quick, "threads": timing_threads, "compile": args.compile,
              "compile_seconds": compile_seconds, "compile_error": compile_error,
              "gloss_frames": GLOSS_FRAMES, "timing": timing, "back_translation": wer, "goal": goal(timing, wer)}
    write_results("sampling", args.out, result)
    return result


if __name__ == "__main__":
    main()
