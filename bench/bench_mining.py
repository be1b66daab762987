"""Mining + loss time as a share of a training step, ours next to pytorch-metric-learning.

For each model and batch size, one batch of P x K images (K = 4) goes through
the network once; the embeddings are then fed, as a leaf tensor, to each
miner + loss pair (ours and PML's, same embeddings, same run), timing
miner + loss forward + loss backward.  The model step is timed separately
(forward + backward of the network alone), and

    % of step = miner+loss / (model step + miner+loss).

``ratio`` is PML ms / ours ms (> 1: ours is faster).  Times are the best of
several runs; single-threaded (the default) they are process CPU time, which
other processes on a shared machine cannot inflate.  PML runs with its
defaults (``LpDistance`` normalising the embeddings), as its users would.
Our semi-hard miner defaults to FaceNet's "hardest semi-hard negative per
anchor-positive pair"; PML's ``TripletMarginMiner("semihard")`` returns every
semi-hard triplet, so the row "semi-hard (all)" gives the like-for-like result.

The memory table adds a cross-batch memory of M embeddings (ours: ``MemoryLoss``;
PML: ``CrossBatchMemory`` with a queue one batch larger, the definition under which
the two agree, tests/trainer/test_memory.py).  Both enqueue on every call, so the
timing includes the queue update; both are filled with random unit vectors first.

Run: PYTHONPATH=. python bench/bench_mining.py [--quick] [--memory-sizes 1024,4096]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import Tensor, nn

from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.losses.memory import MemoryLoss
from trainer.miners import BatchAllMiner, BatchHardMiner, HardPairMiner, SemiHardMiner, SemiHardMode, TripletMiner

K = 4
TRIPLET_MARGIN = 0.2
PAIR_MARGIN = 1.0


class SmallCNN(nn.Module):
    """Three conv blocks on 28 px grey images, ~100k parameters, 64-d unit embeddings."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(
            block(1, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(128, dim)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.head(self.features(x)), dim=1)


class Backbone224(nn.Module):
    """MobileNetV3-small, random init (nothing is downloaded), 128-d unit embeddings."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=dim)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


@dataclass(frozen=True)
class ModelCase:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    batches: tuple[int, ...]
    step_batches: tuple[int, ...]  # batches whose model step is measured; others extrapolated


Runner = Callable[[Tensor, Tensor], Tensor]


def miner_pairs() -> list[tuple[str, Runner, Runner]]:
    """(name, ours, PML): each returns the scalar loss to back-propagate."""
    m = TRIPLET_MARGIN

    def ours_triplet(miner: TripletMiner) -> Runner:
        loss = TripletLoss(m, miner=miner)
        return lambda e, y: loss(e, y).loss

    def pml_triplet(miner: Callable[[Tensor, Tensor], tuple[Tensor, ...]]) -> Runner:
        loss = pml_losses.TripletMarginLoss(margin=m)
        return lambda e, y: loss(e, y, miner(e, y))

    our_pair_loss = ContrastiveLoss(PAIR_MARGIN, miner=HardPairMiner(PAIR_MARGIN))
    pml_pair_loss = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=PAIR_MARGIN)
    pml_pair_miner = pml_miners.PairMarginMiner(pos_margin=0.0, neg_margin=PAIR_MARGIN)
    return [
        ("batch-hard", ours_triplet(BatchHardMiner(m)), pml_triplet(pml_miners.BatchHardMiner())),
        (
            "semi-hard",
            ours_triplet(SemiHardMiner(m)),
            pml_triplet(pml_miners.TripletMarginMiner(m, type_of_triplets="semihard")),
        ),
        (
            "semi-hard (all)",
            ours_triplet(SemiHardMiner(m, mode=SemiHardMode.ALL)),
            pml_triplet(pml_miners.TripletMarginMiner(m, type_of_triplets="semihard")),
        ),
        (
            "batch-all",
            ours_triplet(BatchAllMiner(m)),
            pml_triplet(pml_miners.TripletMarginMiner(m, type_of_triplets="all")),
        ),
        (
            "hard-pair (contrastive)",
            lambda e, y: our_pair_loss(e, y).loss,
            lambda e, y: pml_pair_loss(e, y, pml_pair_miner(e, y)),
        ),
    ]


def memory_pairs(size: int, batch: int, dim: int, generator: torch.Generator) -> list[tuple[str, Runner, Runner]]:
    """(name, ours, PML) with a cross-batch memory of ``size`` rows, both queues pre-filled."""
    m = TRIPLET_MARGIN
    distance = pml_distances.LpDistance(normalize_embeddings=False)
    cases = [
        ("batch-hard", BatchHardMiner(m), pml_miners.BatchHardMiner(distance=distance)),
        ("semi-hard (all)", SemiHardMiner(m, mode=SemiHardMode.ALL),
         pml_miners.TripletMarginMiner(m, type_of_triplets="semihard", distance=distance)),
        ("batch-all", BatchAllMiner(m), pml_miners.TripletMarginMiner(m, type_of_triplets="all", distance=distance)),
    ]
    runners: list[tuple[str, Runner, Runner]] = []
    for name, our_miner, pml_miner in cases:
        ours = MemoryLoss(TripletLoss(m, miner=our_miner), size)
        theirs = pml_losses.CrossBatchMemory(pml_losses.TripletMarginLoss(m, distance=distance), dim,
                                             memory_size=size + batch, miner=pml_miner)
        for _ in range(-(-(size + batch) // batch)):  # fill both queues with random unit vectors
            noise = nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)
            labels = torch.randint(0, max(2, size // 8), (batch,), generator=generator)
            ours(noise, labels)
            theirs(noise, labels)
        runners.append((name, lambda e, y, f=ours: f(e, y).loss, lambda e, y, f=theirs: f(e, y)))
    return runners


Clock = Callable[[], float]


def timed(fn: Callable[[], object], clock: Clock, budget_s: float, min_runs: int = 5, max_runs: int = 40) -> float:
    """Best time in ms after one warm-up call (the minimum: interference only adds)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times) * 1000.0


def pk_labels(batch: int, generator: torch.Generator) -> Tensor:
    labels = torch.arange(batch // K).repeat_interleave(K)
    return labels[torch.randperm(batch, generator=generator)]


def model_step_ms(model: nn.Module, x: Tensor, clock: Clock, runs: int) -> float:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        emb = model(x)
        emb.backward(torch.ones_like(emb) / emb.numel())

    return timed(step, clock, budget_s=0.0, min_runs=runs, max_runs=runs)


def loss_ms(run: Runner, emb: Tensor, labels: Tensor, clock: Clock, budget_s: float) -> float:
    def once() -> None:
        emb.grad = None
        run(emb, labels).backward()

    return timed(once, clock, budget_s)


def bench_case(
    case: ModelCase, clock: Clock, budget: float, generator: torch.Generator, memory_sizes: list[int],
) -> tuple[list[str], list[str], list[str]]:
    """(model step rows, miner rows, memory rows) of the three tables for one model."""
    model = case.make().train()
    params = sum(p.numel() for p in model.parameters())
    steps: list[str] = []
    rows: list[str] = []
    memory_rows: list[str] = []
    step_by_batch: dict[int, float] = {}
    for batch in case.batches:
        labels = pk_labels(batch, generator)
        if batch in case.step_batches:
            x = torch.randn(batch, *case.input_shape, generator=generator)
            step = model_step_ms(model, x, clock, runs=2 if case.input_shape[1] > 100 else 5)
            step_by_batch[batch] = step
            note = ""
            with torch.no_grad():
                emb = model(x)
        else:
            # Too slow on this CPU: scale the largest measured step linearly in the batch.
            ref = max(step_by_batch)
            step = step_by_batch[ref] * batch / ref
            note = f" (step extrapolated from batch {ref})"
            emb = nn.functional.normalize(torch.randn(batch, 128, generator=generator), dim=1)
        steps.append(f"| {case.name} ({params / 1e3:.0f}k params) | {batch} | {step:.1f}{note} |")
        emb.requires_grad_()
        for name, ours, theirs in miner_pairs():
            t_ours = loss_ms(ours, emb, labels, clock, budget)
            t_pml = loss_ms(theirs, emb, labels, clock, budget)
            rows.append(
                f"| {case.name} | {batch} | {name} | {t_ours:.2f} | {t_pml:.2f} | {t_pml / t_ours:.1f}x | "
                f"{100 * t_ours / (step + t_ours):.2f} % | {100 * t_pml / (step + t_pml):.2f} %{'*' if note else ''} |"
            )
            print(rows[-1], flush=True)
        if batch != min(case.batches):
            continue
        for size in memory_sizes:  # CPU batches are small: that is what the memory is for
            for name, ours, theirs in memory_pairs(size, batch, emb.shape[1], generator):
                t_ours = loss_ms(ours, emb, labels, clock, budget)
                t_pml = loss_ms(theirs, emb, labels, clock, budget)
                memory_rows.append(
                    f"| {case.name} | {batch} | {name} | {size} | {t_ours:.2f} | {t_pml:.2f} | "
                    f"{t_pml / t_ours:.1f}x | {100 * t_ours / (step + t_ours):.2f} % | "
                    f"{100 * t_pml / (step + t_pml):.2f} % |"
                )
                print(memory_rows[-1], flush=True)
    return steps, rows, memory_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; 224 px at batch 32 only")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: on a shared machine, multi-threaded ops "
        "stall whenever one of their threads is descheduled)",
    )
    parser.add_argument("--memory-sizes", default="1024,4096",
                        help="cross-batch memory sizes for the memory table (empty: none)")
    args = parser.parse_args()
    memory_sizes = [int(v) for v in args.memory_sizes.split(",") if v]
    torch.set_num_threads(args.threads)
    # Single-threaded, process CPU time is the code's own cost even while other
    # processes share the cores; with more threads only wall time is meaningful.
    single = args.threads == 1
    clock, clock_name = (time.process_time, "process CPU time") if single else (time.perf_counter, "wall time")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    budget = 0.3 if args.quick else 1.0
    cases = [
        ModelCase("small CNN 28px", SmallCNN, (1, 28, 28), (32, 128, 512), (32, 128, 512)),
        ModelCase(
            "MobileNetV3-S 224px",
            Backbone224,
            (3, 224, 224),
            (32,) if args.quick else (32, 128, 512),
            (32,) if args.quick else (32, 128),
        ),
    ]
    steps: list[str] = []
    rows: list[str] = []
    memory_rows: list[str] = []
    for case in cases:
        case_steps, case_rows, case_memory = bench_case(case, clock, budget, generator, memory_sizes)
        steps += case_steps
        rows += case_rows
        memory_rows += case_memory
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {clock_name}, best of >= 5 runs, "
          f"K = {K} images per class, triplet margin {TRIPLET_MARGIN}, pair margin {PAIR_MARGIN}")
    print()
    print("| model | batch | model step ms (fwd + bwd) |")
    print("|---|---|---|")
    print("\n".join(steps))
    print()
    print("| model | batch | miner | ours ms | PML ms | ratio | ours % of step | PML % of step |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if memory_rows:
        print()
        print("| model | batch | miner | memory | ours ms | PML ms | ratio | ours % of step | PML % of step |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(memory_rows))
    if any("*" in r for r in rows):
        print("\n\\* model step extrapolated linearly from the largest measured batch; "
              "miner + loss timed on random unit embeddings of the model's size.")


if __name__ == "__main__":
    main()
