"""Without a GPU, the kernel tests run the Triton kernels on CPU tensors through the Triton interpreter.

`triton.jit` picks the interpreter when a kernel is defined, so TRITON_INTERPRET is set here, at import
time, before any test module imports a kernel. The interpreter costs milliseconds per program: keep
grids tiny. With a GPU the kernels are compiled and run on it.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "kernels.lora_shrink" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(sys.modules["kernels.lora_shrink"]._shrink_kernel, InterpretedFunction):
        raise RuntimeError(
            "the Triton kernels were defined before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
            "set it in the environment or in a conftest that loads earlier"
        )
