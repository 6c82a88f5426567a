"""What Geo-Sign's hyperbolic regulariser costs per training step, and the branch against the paper's listings.

Plain script: ``python benchmarks/hyperbolic_overhead.py [--quick] [--compile] [--out DIR]``.

1. Full training steps (forward + backward + both optimisers, through a Lightning Trainer with
   the YAML's trainer settings, the CLI's NonFiniteGuard and a CSV logger writing every
   ``log_every_n_steps``) of ``GeoSignTranslator`` with ``hyperbolic`` pooled and token against
   the Uni-Sign baseline (the same model with the branch switched off), at the configurations
   the experiment YAMLs define (``yaml_config``):
   ``demo``: ``experiments/demo/geosign_{pooled,token}.yaml`` exactly (model init_args, trainer
   settings) on the first training batch of the YAML's own SynthSign DataModule (batch 8,
   ``max_len`` 32 frames); ``paper``: ``experiments/geosign_{pooled,token}.yaml``'s model section
   (ST-GCN widths, hyp_dim 256, Table 3 values) with a random mT5-base-width LM of 2+2 layers
   instead of 12+12 (no weights are downloaded, and a CPU step stays seconds) and the
   synthsign-zh vocabulary, on a random batch of the YAML's shapes (batch 8, ``max_len`` 256
   frames, ``max_target_len`` text tokens), in float32 (the YAML's bf16-mixed is
   ``benchmarks/gpu.py``'s). Each mode runs with ``compile_hyperbolic`` off and, with
   ``--compile``, on. Branch on and off take turns round by round so a burst of load on the
   shared box hits both alike; the ratio is taken round by round (its median and quartiles are
   reported). Goal: pooled and token within 1.05x of the baseline.
2. The hyperbolic branch alone (``HyperbolicBranch`` forward + backward at the paper shapes)
   against the same computation written with ``benchmarks/geoopt_reference.py`` (listings
   4-8 on geoopt: the 50-iteration Fréchet mean with its per-step convergence check, broadcast
   attention). Goal: ours at least 5x faster. Both variants share the masked means and the
   Euclidean Linear maps in front of the ball; their time is measured on its own and a second
   speed-up removes it from both (the geometry alone). Timed in float32 and under CPU bf16
   autocast, the paper's training precision (Table 3), where those Linear maps cost less than
   half. ``--compile`` adds ``torch.compile`` (inductor) of our branch; its one-off compile time
   is reported.

Prints two tables, writes ``benchmarks/results/hyperbolic_overhead.json``.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import geoopt_reference as listing  # noqa: E402
from benchmarks.common import median_time, parse_args, print_table, timed, write_results  # noqa: E402
from datamodules.batches import length_mask  # noqa: E402
from datamodules.keypoints import PART_NAMES, PART_NODES  # noqa: E402
from lightning_modules.callbacks import NonFiniteGuard  # noqa: E402
from lightning_modules.geosign import GeoSignTranslator  # noqa: E402
from translation.hyperbolic_branch import HyperbolicBranch, masked_mean  # noqa: E402

MODES = ("pooled", "token")
REPO = Path(__file__).resolve().parents[1]
# the YAMLs of each configuration: baseline first, then the two modes (identical but for `hyperbolic`)
YAMLS = {"demo": {m: REPO / "experiments" / "demo" / f"{n}.yaml"
                  for m, n in (("baseline", "unisign_pose"), ("pooled", "geosign_pooled"), ("token", "geosign_token"))},
         "paper": {m: REPO / "experiments" / f"{n}.yaml"
                   for m, n in (("baseline", "unisign_pose"), ("pooled", "geosign_pooled"), ("token", "geosign_token"))}}
# the paper's LM is mT5-base (d_model 768, d_ff 2048, 12 heads of 64); 2+2 layers instead of 12+12
PAPER_MT5 = dict(d_model=768, d_ff=2048, num_layers=2, num_decoder_layers=2, num_heads=12, d_kv=64)
PAPER_ENCODER = {"hidden": [64, 64, 128, 256]}  # PoseEncoder's defaults: ST-GCN widths, part_dim 256 (supplement C.1)
QUICK = {"quick": dict(batch=2, frames=8, tokens=5, hyp_dim=16, encoder={"hidden": [8, 8, 16], "temporal_blocks": 1},
                       mt5=dict(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16),
                       init_args={}, trainer={})}
VOCAB = 210  # synthsign-zh's size: target ids are drawn below it
TRAINER_KEYS = ("gradient_clip_val", "accumulate_grad_batches", "log_every_n_steps")  # precision: float32 here
LM_SETUP_KEYS = ("tokenizer", "mt5_pretrained", "mt5_config", "hyperbolic", "compile_hyperbolic", "init_from")
NETWORK_KEYS = ("mt5_pretrained", "mt5_config", "encoder")


def yaml_config(name: str) -> dict:
    """The ``name`` configuration ("demo" or "paper") from its YAMLs: the Geo-Sign model init_args
    (checked equal across baseline, pooled and token but for ``hyperbolic``), the trainer
    settings that shape a step, and the batch shape (data section: batch_size, max_len frames,
    max_target_len tokens). "paper" swaps the pretrained mT5-base for ``PAPER_MT5`` (random
    weights, synthsign-zh tokenizer)."""
    docs = {mode: yaml.safe_load(path.read_text()) for mode, path in YAMLS[name].items()}
    args = {mode: dict(doc["model"]["init_args"]) for mode, doc in docs.items()}
    # pooled and token agree but for `hyperbolic`; the baseline (timed as the pooled model with its
    # branch off) has the same network (the paper's Uni-Sign YAML keeps Uni-Sign's own optimiser
    # settings and weights, which do not change a step's work)
    same = lambda a, b, keys: all(a.get(k) == b.get(k) for k in keys)  # noqa: E731
    everything = set(args["pooled"]) | set(args["token"])
    if not same(args["pooled"], args["token"], everything - {"hyperbolic"}) or args["token"]["hyperbolic"] != "token" \
            or args["pooled"]["hyperbolic"] != "pooled" or args["baseline"].get("hyperbolic") is not None \
            or not same(args["pooled"], args["baseline"], NETWORK_KEYS):
        raise ValueError(f"{name}: the YAMLs {[str(p) for p in YAMLS[name].values()]} differ beyond `hyperbolic`")
    init_args = {k: v for k, v in args["pooled"].items() if k not in LM_SETUP_KEYS}
    data = docs["pooled"]["data"]["init_args"]
    mt5 = args["pooled"].get("mt5_config") or PAPER_MT5
    return {"yamls": {mode: str(path.relative_to(REPO)) for mode, path in YAMLS[name].items()},
            "batch": data.get("batch_size", 8), "frames": data.get("max_len", 256),
            "tokens": data.get("max_target_len", 64), "hyp_dim": init_args.get("hyp_dim", 256),
            "encoder": init_args.pop("encoder", None) or PAPER_ENCODER, "mt5": mt5,
            "mt5_is_paper_lm": "mt5_config" not in args["pooled"], "init_args": init_args,
            # timed per optimizer step without accumulation: the paper's 8 micro-batches per step
            # would share one (Riemannian) optimiser step and only shrink the branch's share
            "trainer": {k: docs["pooled"]["trainer"][k] for k in TRAINER_KEYS if k in docs["pooled"]["trainer"]}
            | {"accumulate_grad_batches": 1},
            "data": data if name == "demo" else None}


def demo_batch(cfg: dict) -> dict:
    """The first training batch of the config's own SynthSign DataModule (generated on first use
    under the repository's data/, as ``lightning fit`` does; main process)."""
    from datamodules.translation import SignTranslationDataModule

    data = {k: v for k, v in cfg["data"].items() if not (isinstance(v, str) and v.startswith("${"))}
    data |= {"tokenizer": "synthsign-zh", "language": "zh", "num_workers": 0,
             "data_dir": str(REPO / data["data_dir"])}
    dm = SignTranslationDataModule(**data)
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def build_model(cfg: dict, mode: str, compile_branch: bool = False) -> GeoSignTranslator:
    torch.manual_seed(0)
    init_args = {k: v for k, v in cfg["init_args"].items() if k != "hyp_dim"}
    return GeoSignTranslator(mt5_config=cfg["mt5"], encoder=cfg["encoder"], hyperbolic=mode, hyp_dim=cfg["hyp_dim"],
                             compile_hyperbolic=compile_branch, **init_args)


def make_batch(cfg: dict, seed: int = 0) -> dict:
    """A translation batch (datamodules/batches.py layout) of random poses and tokens, some padding."""
    g = torch.Generator().manual_seed(seed)
    B, T, L = cfg["batch"], cfg["frames"], cfg["tokens"]
    frame_len = torch.randint(T // 2, T + 1, (B,), generator=g)
    frame_len[0] = T
    token_len = torch.randint(max(L // 2, 1), L + 1, (B,), generator=g)
    token_len[0] = L
    batch = {p: torch.rand(B, T, PART_NODES[p], 3, generator=g) * 2 - 1 for p in PART_NAMES}
    batch["frame_mask"] = length_mask(frame_len)  # (B, T): frame_len[0] = T
    batch["target_mask"] = length_mask(token_len)  # (B, L): token_len[0] = L
    batch["target_ids"] = torch.randint(3, VOCAB, (B, L), generator=g).masked_fill(~batch["target_mask"], 0)
    batch["target_ids"][torch.arange(B), token_len - 1] = 1  # eos
    batch |= {"text": [""] * B, "gloss": [[]] * B, "name": [f"s{i}" for i in range(B)]}
    return batch


class StepTimer(L.Callback):
    """Wall time from batch start to batch end: forward, backward and the optimiser steps (with
    ``synchronize``, CUDA work queued in the step is waited for at both ends)."""

    def __init__(self, synchronize: bool = False) -> None:
        self.times: list[float] = []
        self.synchronize = synchronize and torch.cuda.is_available()

    def on_train_batch_start(self, *args) -> None:
        if self.synchronize:
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        if self.synchronize:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


def fit_steps(model: GeoSignTranslator, batch: dict, steps: int, trainer_args: dict | None = None,
              accelerator: str = "cpu", synchronize: bool = False) -> list[float]:
    """Run ``steps`` training steps on ``batch`` through a Trainer with ``trainer_args`` (the YAML's
    gradient clipping, accumulation, log interval), the CLI's NonFiniteGuard and a CSV logger (in
    a temporary folder); their wall times."""
    timer = StepTimer(synchronize)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=steps, logger=CSVLogger(logs),
                            callbacks=[timer, NonFiniteGuard()], enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, default_root_dir=logs, **(trainer_args or {}))
        trainer.fit(model, torch.utils.data.DataLoader([batch] * steps * trainer.accumulate_grad_batches,
                                                       batch_size=None))
    return timer.times


@contextmanager
def branch_off(model: GeoSignTranslator) -> Iterator[None]:
    """The same network as the Uni-Sign baseline: no hyperbolic branch, no α blend, and so (the
    optimisers are configured per fit) no Riemannian Adam. Restored on exit."""
    saved = model.hyperbolic, model.blend
    model.hyperbolic = model.blend = None
    try:
        yield
    finally:
        model.hyperbolic, model.blend = saved


def median_quartiles(ratios: list[float]) -> tuple[float, float, float]:
    """(median, q1, q3) of per-round ratios; a single round gives its ratio thrice."""
    if len(ratios) == 1:
        return (ratios[0],) * 3
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q1, q3


def bench_steps(name: str, cfg: dict, rounds: int, steps: int, compile_branch: bool = False) -> list[dict]:
    """Step time of pooled and token against the baseline. Each mode's model runs with its branch
    on and off (``branch_off``: exactly the baseline network), so the ratio compares the same
    weights and memory layout and only the branch differs. On and off take turns round by round,
    the order swapped every round (the first step of a fit is untimed: it pays the Trainer's
    set-up). The ratio is the median over rounds of on / off within the round, so load that
    drifts over minutes cancels; the quartiles of the per-round ratios show the noise it sits in.
    With ``compile_branch`` each mode also runs with ``compile_hyperbolic: true`` (its one-off
    compile, in the untimed first fit, is recorded)."""
    batch = demo_batch(cfg) if cfg.get("data") else make_batch(cfg)
    shape = {"batch": int(batch["frame_mask"].shape[0]), "frames": int(batch["frame_mask"].shape[1]),
             "tokens": int(batch["target_mask"].shape[1]), "hyp_dim": cfg["hyp_dim"], "lm_width": cfg["mt5"]["d_model"]}
    rows = []
    for mode, compiled in ((m, c) for m in MODES for c in ((False, True) if compile_branch else (False,))):
        model = build_model(cfg, mode, compiled)
        per_round = {True: [], False: []}  # branch on / off: median step of each round

        def run(on: bool, n: int) -> list[float]:
            with nullcontext() if on else branch_off(model):
                return fit_steps(model, batch, n, cfg["trainer"])

        first = time.perf_counter()
        run(True, 1)  # untimed: first-call allocations, lazy initialisation, compiling
        compile_s = time.perf_counter() - first if compiled else None
        run(False, 1)
        for r in range(rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                per_round[on].append(statistics.median(run(on, steps + 1)[1:]))
        ratios = [on / off for on, off in zip(per_round[True], per_round[False])]
        ratio, q1, q3 = median_quartiles(ratios)
        rows.append({"config": name, "mode": mode, "compile_hyperbolic": compiled, **shape,
                     "step_ms": 1e3 * statistics.median(per_round[True]),
                     "baseline_ms": 1e3 * statistics.median(per_round[False]), "ratio": ratio,
                     "ratio_q1": q1, "ratio_q3": q3, "ratios": ratios, "steps": rounds * steps,
                     "first_fit_s": compile_s})
    return rows


class ListingBranch(nn.Module):
    """HyperbolicBranch's computation written with the paper's listings on geoopt (the reference)."""

    def __init__(self, mode: str, part_dim: int, text_dim: int, hyp_dim: int, init_c: float = 1.5,
                 label_smoothing: float = 0.2) -> None:  # c_init, label_smoothing_hyp, Table 3
        super().__init__()
        self.mode, self.ball = mode, listing.make_manifold(init_c)
        self.part_proj = nn.ModuleList(listing.HyperbolicProjection(part_dim, hyp_dim, self.ball) for _ in PART_NAMES)
        self.text_proj = listing.HyperbolicProjection(text_dim, hyp_dim, self.ball)
        self.W_key = nn.Parameter(torch.eye(hyp_dim))
        self.b_key = nn.Parameter(torch.zeros(hyp_dim))
        self.loss = listing.HyperbolicContrastiveLoss(self.ball, label_smoothing=label_smoothing)

    def forward(self, part_features: dict[str, Tensor], frame_mask: Tensor, decoder_hidden: Tensor,
                target_mask: Tensor) -> Tensor:
        h = torch.stack([proj(masked_mean(part_features[p], frame_mask)) for proj, p in zip(self.part_proj, PART_NAMES)],
                        dim=1)  # (B, P, D)
        if self.mode == "pooled":
            w = torch.softmax(self.ball.dist0(h), dim=1)  # Eq. 4, λ_w = 1
            pose = listing.weighted_frechet_mean(h.transpose(0, 1), w.T, self.ball)  # (B, D)
            text = listing.pooled_text_embedding(decoder_hidden, target_mask, self.text_proj)  # (B, D)
            return self.loss(pose, text)["loss"]
        tokens = self.text_proj(decoder_hidden)  # (B, L, D)
        b_point = self.ball.expmap0(self.b_key)
        contexts, _ = listing.token_attention(self.ball, h, tokens, target_mask, self.W_key, b_point)  # (B, P, D)
        return torch.stack([self.loss(h[:, i], contexts[:, i])["loss"] for i in range(len(PART_NAMES))]).mean()


def fwd_bwd(loss_of: Callable[[], Tensor], bf16: bool) -> Callable[[], None]:
    """A step that runs ``loss_of`` (under CPU bf16 autocast if ``bf16``) and backpropagates it."""
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        loss.backward()
    return step


PRECISIONS = ("32-true", "bf16-mixed")  # Lightning's names; the paper trains with bf16 autocast (Table 3)
LISTINGS, SHARED = "listings (geoopt)", "shared Euclidean maps"


def bench_branch(cfg: dict, rounds: int, repeats: int, compile_branch: bool) -> list[dict]:
    """Forward + backward of the branch alone: ours (eager, optionally compiled) vs the listings,
    in float32 and under CPU bf16 autocast. Under autocast the Euclidean Linear maps of both run in
    bf16; the listings' geoopt calls follow autocast where they matmul, ours keep the geometry in
    float32 (``geometry/nn.py``). The variants take turns over ``rounds`` rounds (median of
    ``repeats`` calls each), and each speed-up is the median of its per-round ratios, as in
    ``bench_steps``: the listings' time alone moves by half from run to run on this machine."""
    g = torch.Generator().manual_seed(1)
    B, T, L, part_dim, text_dim = cfg["batch"], cfg["frames"], cfg["tokens"], cfg["encoder"]["hidden"][-1], cfg["mt5"]["d_model"]
    batch = make_batch(cfg)
    inputs = ({p: torch.randn(B, T, part_dim, generator=g, requires_grad=True) for p in PART_NAMES},
              batch["frame_mask"], torch.randn(B, L, text_dim, generator=g, requires_grad=True), batch["target_mask"])
    rows = []
    for precision, mode in ((precision, mode) for precision in PRECISIONS for mode in MODES):
        bf16 = precision == "bf16-mixed"
        torch.manual_seed(0)
        listing_branch = ListingBranch(mode, part_dim, text_dim, cfg["hyp_dim"])
        ours = {"ours": HyperbolicBranch(mode, part_dim=part_dim, text_dim=text_dim, hyp_dim=cfg["hyp_dim"])}
        compile_s = None
        if compile_branch:
            compiled = HyperbolicBranch(mode, part_dim=part_dim, text_dim=text_dim, hyp_dim=cfg["hyp_dim"])
            compiled.compile(fullgraph=True)
            compile_s = timed(fwd_bwd(lambda: compiled(*inputs)[0], bf16))[0]  # the first call compiles forward and backward
            ours["ours, torch.compile"] = compiled
        steps = {LISTINGS: fwd_bwd(lambda: listing_branch(*inputs), bf16),
                 **{label: fwd_bwd(lambda m=module: m(*inputs)[0], bf16) for label, module in ours.items()},
                 SHARED: fwd_bwd(euclidean_maps(mode, part_dim, text_dim, cfg["hyp_dim"], inputs), bf16)}
        seconds = {label: [] for label in steps}
        for _ in range(rounds):
            for label, step in steps.items():
                seconds[label].append(median_time(step, repeats))
        ms = {label: 1e3 * statistics.median(t) for label, t in seconds.items()}
        for label in (LISTINGS, *ours):
            ratios = [listing / t for listing, t in zip(seconds[LISTINGS], seconds[label])]
            ratio, q1, q3 = median_quartiles(ratios)
            rows.append({"precision": precision, "mode": mode, "variant": label, "fwd_bwd_ms": ms[label],
                         "speedup_vs_listings": ratio, "speedup_q1": q1, "speedup_q3": q3,
                         "euclidean_ms": ms[SHARED],
                         "geometry_speedup": (ms[LISTINGS] - ms[SHARED]) / max(ms[label] - ms[SHARED], 1e-3),
                         "compile_s": compile_s if "compile" in label else None})
    return rows


def euclidean_maps(mode: str, part_dim: int, text_dim: int, hyp_dim: int, inputs: tuple) -> Callable[[], Tensor]:
    """The forward, as a loss to backpropagate, of the work both variants share and neither can
    speed up: the masked temporal means and the Euclidean Linear maps in front of the ball (4
    parts, and the text: every token in token mode, the pooled text in pooled mode). At the
    paper's token shapes the (B·L, 768) x (768, 256) text map alone is a large part of the
    listing's time, which bounds any whole-branch speed-up (Amdahl); the geometry speed-up column
    removes it from both."""
    part_features, frame_mask, decoder_hidden, target_mask = inputs
    parts = nn.ModuleList(nn.Linear(part_dim, hyp_dim) for _ in PART_NAMES)
    text = nn.Linear(text_dim, hyp_dim)

    def loss() -> Tensor:
        h = torch.stack([lin(masked_mean(part_features[p], frame_mask)) for lin, p in zip(parts, PART_NAMES)], 1)
        t = text(decoder_hidden) if mode == "token" else text(masked_mean(decoder_hidden, target_mask))
        return h.float().sum() + t.float().sum()

    return loss


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv,
                      {"compile": "also time compile_hyperbolic (torch.compile, inductor); compiling takes minutes on CPU",
                       "demo-only": "only the demo configuration's step rows (no paper steps, no branch table)"})
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one Trainer per round: no banners
    warnings.filterwarnings("ignore", module="lightning")
    if args.quick:
        configs, rounds, steps, repeats = QUICK, 1, 2, 2
    else:
        names = ("demo",) if args.demo_only else ("demo", "paper")
        configs, rounds, steps, repeats = {n: yaml_config(n) for n in names}, 10, 3, 3
    step_rows = [row for name, cfg in configs.items()
                 for row in bench_steps(name, cfg, rounds if name != "paper" else 6, steps if name != "paper" else 2,
                                        args.compile)]
    branch_cfg = next(iter(QUICK.values())) if args.quick else yaml_config("paper")
    branch_rows = [] if args.demo_only else bench_branch(branch_cfg, rounds, repeats, args.compile)
    print_table(f"Training step (fwd + bwd + optimisers), torch threads {torch.get_num_threads()}, "
                f"branch on and off alternating ({rounds} rounds x {steps} steps; paper 6 x 2); ratio: median of per-round ratios",
                step_rows,
                [("config", "config", "s"), ("mode", "mode", "s"), ("compile_hyperbolic", "compiled", ""),
                 ("batch", "B", "d"), ("frames", "T", "d"), ("tokens", "L", "d"), ("hyp_dim", "hyp", "d"),
                 ("lm_width", "LM", "d"), ("step_ms", "ms/step", ".1f"),
                 ("baseline_ms", "baseline ms", ".1f"), ("ratio", "x baseline", ".3f"), ("ratio_q1", "round q1", ".3f"),
                 ("ratio_q3", "round q3", ".3f")])
    if branch_rows:
        print()
        print_table(f"Hyperbolic branch alone, fwd + bwd, batch {branch_cfg['batch']}, {branch_cfg['tokens']} tokens, "
                    f"hyp_dim {branch_cfg['hyp_dim']}, text width {branch_cfg['mt5']['d_model']}", branch_rows,
                    [("precision", "precision", "s"), ("mode", "mode", "s"), ("variant", "variant", "s"), ("fwd_bwd_ms", "ms", ".2f"),
                     ("speedup_vs_listings", "x vs listings", ".1f"), ("speedup_q1", "round q1", ".1f"),
                     ("speedup_q3", "round q3", ".1f"), ("euclidean_ms", "shared Linear ms", ".2f"),
                     ("geometry_speedup", "x geometry only", ".1f"), ("compile_s", "compile s", "")])
    write_results("hyperbolic_overhead", args.out, {
        "quick": args.quick, "configs": configs, "rounds": rounds, "steps_per_round": steps, "repeats": repeats,
        "rows": step_rows, "branch_config": branch_cfg, "branch_rows": branch_rows})


if __name__ == "__main__":
    main()
