"""Compile every Triton kernel for an NVIDIA target without a GPU (run in a process without
TRITON_INTERPRET): catches lowering errors the interpreter cannot see, bf16 included.

    python -m tests.kernels.compile_for_gpu [--arch 90]
"""

from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.lora_expand import _expand_kernel
from kernels.lora_shrink import _shrink_kernel
from kernels.lora_weight_grad import _weight_grad_kernel


def variants(dtype: str) -> list[tuple[triton.JITFunction, dict[str, str], dict[str, object]]]:
    """(kernel, pointer types beyond the int64 index tables, constexprs) as the launchers use them."""
    precision = "ieee" if dtype == "fp32" else "tf32"
    return [
        (
            _shrink_kernel,
            {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "y_ptr": "*fp32", "slot_ranks_ptr": "*i32"},
            {"HAS_SCALE": False, "DOT_PRECISION": precision, "BLOCK_M": 16, "BLOCK_R": 16, "BLOCK_K": 128},
        ),
        (
            _shrink_kernel,  # dy of expand: scaled, input in the output's dtype
            {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "y_ptr": "*fp32", "scale_ptr": "*fp32"},
            {"HAS_SCALE": True, "DOT_PRECISION": precision, "BLOCK_M": 64, "BLOCK_R": 16, "BLOCK_K": 128},
        ),
        *[
            (
                _expand_kernel,
                {"y_ptr": "*fp32", "w_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "scale_ptr": "*fp32"},
                {
                    "HAS_SCALE": not sum_slices,
                    "SUM_SLICES": sum_slices,
                    "NUM_SLICES": 3,
                    "DOT_PRECISION": precision,
                    "BLOCK_M": 16,
                    "BLOCK_N": 128,
                    "BLOCK_R": 16,
                },
            )
            for sum_slices in (False, True)
        ],
        (
            _weight_grad_kernel,
            {"u_ptr": "*fp32", "v_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "scale_ptr": "*fp32"},
            {"HAS_SCALE": True, "BLOCK_M": 32, "BLOCK_R": 16, "BLOCK_K": 64},
        ),
    ]


def compile_all(arch: int, dtypes: list[str]) -> int:
    count = 0
    for dtype in dtypes:
        for kernel, pointers, constexprs in variants(dtype):
            names = kernel.arg_names
            constexprs = dict(constexprs)
            if not constexprs.get("HAS_SCALE", False):
                constexprs["scale_ptr"] = None
            signature = {
                name: "constexpr"
                if name in constexprs
                else pointers.get(name, "*i64" if name.endswith("_ptr") else "i32")
                for name in names
            }
            source = ASTSource(
                fn=kernel,
                signature=signature,
                constexprs={(names.index(n),): v for n, v in constexprs.items()},
            )
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
            assert "cubin" in compiled.asm, f"{kernel.__name__} produced no cubin"
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80 (A100) or 90 (H100/H200)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    print(f"compiled {compile_all(args.arch, args.dtypes)} kernel variants for sm_{args.arch}")


if __name__ == "__main__":
    main()
