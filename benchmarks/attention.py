"""Attention backends on one packed batch vs the same batch padded: time and peak memory, forward + backward.

    uv run python benchmarks/attention.py       # CPU section; the CUDA section too when a GPU is present
    uv run python benchmarks/attention.py --num-seqs 32 --max-len 2048 --repeats 5

The batch: ``--num-seqs`` sequences with lengths drawn uniformly from ``--min-len..--max-len``,
``--heads`` x ``--head-dim``, causal self-attention. The packed layout holds only real tokens
(``[total, h, hd]`` + ``cu_seqlens``); the padded one is ``[b, h, max_len, hd]`` with every row padded
to the longest (right padding, so the causal mask alone keeps real queries off the padding).
Each case runs one warm-up then ``--repeats`` timed forward + backward passes (median reported).

Peak memory, measured honestly per device:

* CPU: every case runs in a fresh process; the figure is the growth of the process's peak resident
  set (``getrusage(RUSAGE_SELF).ru_maxrss``) from just after the inputs exist to the end of the runs.
  The inputs are built without freeing any temporary, so the high-water mark at the start is the live
  memory and the growth is what the attention held at its peak (scores, masks, autograd buffers) as
  the operating system saw it, to the page.
* CUDA: ``torch.cuda.max_memory_allocated`` over the runs minus the memory allocated before them.

Each output is compared with the per-segment SDPA output of the same batch (float32 on CPU; a float32
run on CUDA) and the largest absolute difference over real tokens is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmfuse.core.attention import attention
from mmfuse.core.packing import pack, pad, unpad


@dataclass(frozen=True)
class Case:
    """One row of the table: a layout, an :func:`attention` backend and, on CUDA, an SDPA kernel choice."""

    label: str
    layout: str  # "packed" or "padded"
    backend: str
    sdpa_kernel: str | None = None  # a torch.nn.attention.SDPBackend member name, CUDA padded only


@dataclass
class Result:
    seconds: float
    peak_bytes: int
    output: torch.Tensor  # [total, h, hd] float32 on CPU, real tokens only


def draw_lengths(args: argparse.Namespace) -> list[int]:
    generator = torch.Generator().manual_seed(args.seed)
    return torch.randint(args.min_len, args.max_len + 1, (args.num_seqs,), generator=generator).tolist()


def make_inputs(lengths: list[int], args: argparse.Namespace, dtype: torch.dtype, device: str):
    """Packed q, k, v ``[total, h, hd]`` and a fixed output gradient, from ``--seed``."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    shape = (sum(lengths), args.heads, args.head_dim)
    return [torch.randn(shape, generator=generator).to(device, dtype) for _ in range(4)]


def prepare(case: Case, lengths: list[int], args: argparse.Namespace, dtype: torch.dtype, device: str):
    """Inputs of one case and a closure running forward + backward on them.

    Returns:
        ``step() -> output`` (``[total, h, hd]`` packed, ``[b, s, h, hd]`` padded) and the layout.
    """
    rows = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(-1)  # [b, s] right padding
    layout = unpad(rows.to(device))
    packed = make_inputs(lengths, args, dtype, device)  # stays alive: nothing is freed before measuring
    b, s = len(lengths), layout.max_seqlen
    if case.layout == "padded":  # [total, h, hd] -> [b, s, h, hd] leaves; attention reads [b, h, s, hd] views
        q, k, v, grad = (pad(t, layout, b, s) for t in packed)
        kwargs = dict(causal=True)
    else:
        q, k, v, grad = packed
        kwargs = dict(cu_seqlens_q=layout.cu_seqlens, max_seqlen_q=layout.max_seqlen, causal=True)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def step() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        inputs = [t.transpose(1, 2) for t in leaves] if case.layout == "padded" else leaves
        with sdpa_kernel_context(case.sdpa_kernel):
            out = attention(*inputs, backend=case.backend, **kwargs)
        out = out.transpose(1, 2) if case.layout == "padded" else out  # [b, h, s, hd] -> [b, s, h, hd]
        out.backward(grad)
        return out

    return step, layout


def run_case(
    case: Case, lengths: list[int], args: argparse.Namespace, dtype: torch.dtype, device: str
) -> Result:
    """Warm up (a tiny batch, then the real one), then time ``args.repeats`` forward + backward passes.

    The tiny batch loads kernels and thread pools before the memory baseline is taken; the real
    warm-up sits inside the measured block because a high-water mark cannot be reset on CPU.
    """
    prepare(case, [8, 5], args, dtype, device)[0]()
    step, layout = prepare(case, lengths, args, dtype, device)
    with PeakMemory(device) as peak:
        out = step()
        seconds = statistics.median(timed(step, device) for _ in range(args.repeats))
    out = pack(out, layout) if case.layout == "padded" else out
    return Result(seconds, peak.bytes, out.detach().float().cpu())


def sdpa_kernel_context(name: str | None) -> contextlib.AbstractContextManager:
    """Force one SDPA kernel (``SDPBackend.<name>``), or leave SDPA's own dispatch when None."""
    return contextlib.nullcontext() if name is None else sdpa_kernel(getattr(SDPBackend, name))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Wall-clock seconds of one call, with the GPU's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class PeakMemory:
    """Peak memory growth over a ``with`` block, in ``bytes`` (method in the module docstring)."""

    def __init__(self, device: str) -> None:
        self.device, self.bytes = device, 0

    def _now(self) -> int:
        synchronize(self.device)
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.base = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = self._now() - self.base


def _child(case: Case, lengths: list[int], args: argparse.Namespace, queue) -> None:
    result = run_case(case, lengths, args, torch.float32, "cpu")
    queue.put((result.seconds, result.peak_bytes, result.output.numpy()))  # numpy: pickled by value


def run_in_fresh_process(case: Case, lengths: list[int], args: argparse.Namespace) -> Result:
    """CPU peak RSS is a per-process high-water mark: one process per case keeps cases apart."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(case, lengths, args, queue))
    process.start()
    seconds, peak_bytes, output = queue.get()
    process.join()
    return Result(seconds, peak_bytes, torch.from_numpy(output))


def print_table(title: str, results: dict[Case, Result], reference: torch.Tensor, baseline: Case) -> None:
    base = results[baseline]
    print(f"\n{title}  (ratios: this case / {baseline.label})")
    header = f"{'case':38s} {'time s':>8s} {'x time':>7s} {'peak MiB':>9s} {'x mem':>6s} {'max |diff|':>11s}"
    print(header + "\n" + "-" * len(header))
    for case, r in results.items():
        diff = (r.output - reference).abs().max().item()
        print(
            f"{case.label:38s} {r.seconds:8.3f} {r.seconds / base.seconds:7.2f} {r.peak_bytes / 2**20:9.1f}"
            f" {r.peak_bytes / max(base.peak_bytes, 1):6.2f} {diff:11.2e}"
        )


CPU_CASES = [
    Case("packed  sdpa_varlen (auto on CPU)", "packed", "sdpa_varlen"),
    Case("packed  sdpa, block-diagonal mask", "packed", "sdpa"),
    Case("padded  sdpa, causal", "padded", "sdpa"),
]
CUDA_CASES = [
    Case("packed  flash-attn varlen", "packed", "flash"),
    Case("packed  torch varlen_attn", "packed", "torch_varlen"),
    Case("packed  flex (compiled)", "packed", "flex"),
    Case("packed  sdpa_varlen", "packed", "sdpa_varlen"),
    Case("padded  flash-attn", "padded", "flash"),
    Case("padded  sdpa, torch flash kernel", "padded", "sdpa", "FLASH_ATTENTION"),
    Case("padded  sdpa, default dispatch", "padded", "sdpa"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-seqs", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cpu", action="store_true", help="run the CUDA section only")
    args = parser.parse_args()

    lengths = draw_lengths(args)
    total, padded = sum(lengths), len(lengths) * max(lengths)
    print(f"torch {torch.__version__}; {len(lengths)} sequences, {total} tokens, padded to {padded}")
    print(f"({total / padded:.0%} real); {args.heads} heads x {args.head_dim}; causal; forward + backward")

    if not args.skip_cpu:
        print(f"CPU: {torch.get_num_threads()} threads, float32")
        results = {case: run_in_fresh_process(case, lengths, args) for case in CPU_CASES}
        print_table("CPU", results, results[CPU_CASES[0]].output, baseline=CPU_CASES[2])

    if torch.cuda.is_available():
        print(f"\nCUDA: {torch.cuda.get_device_name()}, bfloat16")
        reference = run_case(
            Case("fp32 reference", "packed", "sdpa_varlen"), lengths, args, torch.float32, "cuda"
        )
        results = {}
        for case in CUDA_CASES:
            try:
                results[case] = run_case(case, lengths, args, torch.bfloat16, "cuda")
            except Exception as error:  # a missing kernel or package: say so and measure the rest
                print(f"  skipped {case.label}: {type(error).__name__}: {error}")
        baseline = CUDA_CASES[-1]
        if baseline in results:
            print_table("CUDA", results, reference.output, baseline=baseline)
    else:
        print("\nCUDA: no GPU visible; CUDA section skipped")


if __name__ == "__main__":
    main()
