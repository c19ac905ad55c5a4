"""`make bench`: every budget of the SPEC that this package measures, as ratios of medians."""

import sys

import torch

from . import (
    bench_averaged,
    bench_calls,
    bench_distributed,
    bench_encoders,
    bench_loading,
    bench_resizable,
    bench_torch_ner,
    bench_with_dropout,
    bench_with_torch,
)


def main(argv: list) -> int:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; ratios of medians")
    if "--gpu" in argv:  # P6: the same ratios with CUDA tensors and cupy arrays
        return 0 if bench_with_torch.main("cuda") else 1
    ok = bench_with_torch.main()
    ok &= bench_with_dropout.main()
    ok &= bench_resizable.main()
    ok &= bench_averaged.main()
    ok &= bench_calls.main()
    ok &= bench_loading.main()
    ok &= bench_torch_ner.main()
    ok &= bench_distributed.main()
    ok &= bench_encoders.main()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
